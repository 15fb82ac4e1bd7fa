/** Small, dependency-free SVG charts for the results page. */

const escape = (text: string) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

const format = (n: number) => Math.round(n).toLocaleString("en-US")

export interface Bar {
  readonly group: string
  readonly label: string
  readonly value: number
  readonly highlight: boolean
}

/** Horizontal bars on a log scale (values span several orders of magnitude), grouped. */
export const barChart = (title: string, unit: string, bars: ReadonlyArray<Bar>): string => {
  const labelWidth = 430
  const plotWidth = 420
  const rowHeight = 22
  const groups = [...new Set(bars.map((b) => b.group))]
  const rows = bars.length + groups.length
  const height = 50 + rows * rowHeight + 30
  const max = Math.max(...bars.map((b) => b.value), 10)
  const min = Math.max(1, Math.min(...bars.map((b) => b.value).filter((v) => v > 0)) / 2)
  const x = (v: number) => (plotWidth * (Math.log10(Math.max(v, min)) - Math.log10(min))) / (Math.log10(max * 1.5) - Math.log10(min))
  const out: Array<string> = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${labelWidth + plotWidth + 110}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">${escape(title)}</text>`
  ]
  let y = 40
  for (const group of groups) {
    out.push(`<text x="10" y="${y + 15}" font-weight="bold">${escape(group)}</text>`)
    y += rowHeight
    for (const bar of bars.filter((b) => b.group === group)) {
      const width = Math.max(1, x(bar.value))
      out.push(
        `<text x="${labelWidth - 8}" y="${y + 15}" text-anchor="end">${escape(bar.label)}</text>`,
        `<rect x="${labelWidth}" y="${y + 3}" width="${width.toFixed(1)}" height="${rowHeight - 6}" fill="${bar.highlight ? "#2a7ab9" : "#b7c4cf"}"/>`,
        `<text x="${(labelWidth + width + 6).toFixed(1)}" y="${y + 15}">${format(bar.value)}</text>`
      )
      y += rowHeight
    }
  }
  out.push(`<text x="${labelWidth}" y="${height - 10}" fill="#555">${escape(unit)}, log scale</text>`, `</svg>`)
  return out.join("\n") + "\n"
}

/** Admissions per bucket over time against the configured rate (a dashed line). */
export const seriesChart = (title: string, bucketMs: number, counts: ReadonlyArray<number>, ratePerSecond: number): string => {
  const width = 720
  const height = 260
  const left = 60
  const bottom = 40
  const plotW = width - left - 20
  const plotH = height - bottom - 40
  const expected = (ratePerSecond * bucketMs) / 1000
  const top = Math.max(expected * 1.25, ...counts) || 1
  const xs = (i: number) => left + (plotW * i) / Math.max(1, counts.length - 1)
  const ys = (v: number) => 40 + plotH - (plotH * v) / top
  const path = counts.map((c, i) => `${i === 0 ? "M" : "L"}${xs(i).toFixed(1)},${ys(c).toFixed(1)}`).join(" ")
  const seconds = (counts.length * bucketMs) / 1000
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">${escape(title)}</text>`,
    `<line x1="${left}" y1="${40 + plotH}" x2="${left + plotW}" y2="${40 + plotH}" stroke="#888"/>`,
    `<line x1="${left}" y1="40" x2="${left}" y2="${40 + plotH}" stroke="#888"/>`,
    `<line x1="${left}" y1="${ys(expected).toFixed(1)}" x2="${left + plotW}" y2="${ys(expected).toFixed(1)}" stroke="#d0542c" stroke-dasharray="6 4"/>`,
    `<text x="${left + plotW}" y="${(ys(expected) - 6).toFixed(1)}" text-anchor="end" fill="#d0542c">configured: ${format(expected)} per ${bucketMs} ms</text>`,
    `<path d="${path}" fill="none" stroke="#2a7ab9" stroke-width="1.5"/>`,
    `<text x="${left - 6}" y="${(ys(top) + 4).toFixed(1)}" text-anchor="end">${format(top)}</text>`,
    `<text x="${left - 6}" y="${40 + plotH + 4}" text-anchor="end">0</text>`,
    `<text x="${left}" y="${height - 12}">0 s</text>`,
    `<text x="${left + plotW}" y="${height - 12}" text-anchor="end">${seconds} s</text>`,
    `<text x="${left + plotW / 2}" y="${height - 12}" text-anchor="middle" fill="#555">admissions per ${bucketMs} ms, all processes</text>`,
    `</svg>`
  ].join("\n") + "\n"
}

export interface Line {
  readonly label: string
  /** [x, y] pairs; points with a y of 0 or less are left out (a log scale has no place for them). */
  readonly points: ReadonlyArray<readonly [number, number]>
  readonly color: string
  readonly dashed: boolean
  readonly bold: boolean
}

/** Grid lines of a log scale from 10^`low` to 10^`high`: each power of ten, and its 2x and 5x, lighter. */
const logGrid = (low: number, high: number) => {
  const out: Array<{ readonly value: number; readonly major: boolean }> = []
  for (let p = low; p <= high; p++) {
    out.push({ value: 10 ** p, major: true })
    if (p < high) out.push({ value: 2 * 10 ** p, major: false }, { value: 5 * 10 ** p, major: false })
  }
  return out
}

/** Lines on log scales both ways (keys from 1 to millions, rates over several orders of magnitude), a legend below. */
export const lineChart = (title: string, xUnit: string, yUnit: string, xTicks: ReadonlyArray<number>, lines: ReadonlyArray<Line>): string => {
  const left = 80
  const top = 40
  const plotW = 560
  const plotH = 280
  const legendTop = top + plotH + 50
  const width = left + plotW + 40
  const height = legendTop + lines.length * 18 + 10
  const ys = lines.flatMap((l) => l.points.map(([, y]) => y)).filter((y) => y > 0)
  // Powers of ten: the decades the values span, with a little room at either end.
  const yLow = ys.length === 0 ? 0 : Math.floor(Math.log10(Math.min(...ys) / 1.2))
  const yHigh = ys.length === 0 ? 1 : Math.ceil(Math.log10(Math.max(...ys) * 1.2))
  // A third of a decade of room either side of the first and last key counts.
  const xLow = Math.log10(Math.min(...xTicks)) - 0.3
  const xHigh = Math.log10(Math.max(...xTicks)) + 0.3
  const px = (x: number) => left + (plotW * (Math.log10(x) - xLow)) / (xHigh - xLow)
  const py = (y: number) => top + plotH - (plotH * (Math.log10(y) - yLow)) / (yHigh - yLow)
  const out: Array<string> = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">${escape(title)}</text>`,
    `<rect x="${left}" y="${top}" width="${plotW}" height="${plotH}" fill="none" stroke="#888"/>`
  ]
  for (const { major, value } of logGrid(yLow, yHigh)) {
    out.push(
      `<line x1="${left}" y1="${py(value).toFixed(1)}" x2="${left + plotW}" y2="${py(value).toFixed(1)}" stroke="${major ? "#d8d8d8" : "#efefef"}"/>`,
      `<text x="${left - 6}" y="${(py(value) + 4).toFixed(1)}" text-anchor="end"${major ? "" : ` fill="#777" font-size="10"`}>${format(value)}</text>`
    )
  }
  for (const x of xTicks) {
    out.push(
      `<line x1="${px(x).toFixed(1)}" y1="${top}" x2="${px(x).toFixed(1)}" y2="${top + plotH}" stroke="#e3e3e3"/>`,
      `<text x="${px(x).toFixed(1)}" y="${top + plotH + 16}" text-anchor="middle">${format(x)}</text>`
    )
  }
  out.push(
    `<text x="${left + plotW / 2}" y="${top + plotH + 34}" text-anchor="middle" fill="#555">${escape(xUnit)}, log scale</text>`,
    `<text x="16" y="${top + plotH / 2}" text-anchor="middle" fill="#555" transform="rotate(-90 16 ${top + plotH / 2})">${escape(yUnit)}, log scale</text>`
  )
  lines.forEach((line, i) => {
    const points = line.points.filter(([, y]) => y > 0)
    const stroke = `stroke="${line.color}" stroke-width="${line.bold ? 2.5 : 1.5}"${line.dashed ? ` stroke-dasharray="6 4"` : ""}`
    const path = points.map(([x, y], j) => `${j === 0 ? "M" : "L"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ")
    const legendY = legendTop + i * 18
    out.push(
      `<path d="${path}" fill="none" ${stroke}/>`,
      ...points.map(([x, y]) => `<circle cx="${px(x).toFixed(1)}" cy="${py(y).toFixed(1)}" r="3" fill="${line.color}"/>`),
      `<line x1="${left}" y1="${legendY - 4}" x2="${left + 30}" y2="${legendY - 4}" ${stroke}/>`,
      `<text x="${left + 38}" y="${legendY}"${line.bold ? ` font-weight="bold"` : ""}>${escape(line.label)}</text>`
    )
  })
  out.push(`</svg>`)
  return out.join("\n") + "\n"
}
