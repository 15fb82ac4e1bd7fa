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
