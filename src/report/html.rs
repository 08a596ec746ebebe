//! The report as one self-contained HTML page: inline CSS and SVG charts drawn
//! here (growth over time, top consumers, dedup by group), the restore drills
//! per image, no scripts, no network, so it can be mailed or served as a static file.

use super::Report;
use crate::util::human_bytes;
use std::fmt::Write;

/// Snapshot rows listed in the page (the largest unique consumers first).
const TABLE_ROWS: usize = 200;
/// Bars in the "top" and "by group" charts.
const CHART_BARS: usize = 12;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A round axis maximum at or above `v` bytes: 1, 2, 4, 5 or 8 times a power
/// of ten of the binary unit `v` is shown in, so quarter ticks read well.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mut unit = 1.0;
    while v / unit >= 1024.0 {
        unit *= 1024.0;
    }
    let x = v / unit;
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 4.0, 5.0, 8.0, 10.0].iter().map(|m| m * p).find(|m| *m >= x).unwrap_or(10.0 * p) * unit
}

fn short_bytes(v: f64) -> String {
    human_bytes(v.max(0.0) as u64).replace(".00", "")
}

/// Daily stored bytes added as bars, the running total as a line (own scale).
fn growth_chart(r: &Report) -> String {
    let days = &r.growth.days;
    let (w, h, left, right, top, bottom) = (1000.0, 320.0, 90.0, 90.0, 20.0, 60.0);
    let mut s = format!(r#"<svg class="chart" id="chart-growth" viewBox="0 0 {w} {h}" role="img" aria-label="Growth over time">"#);
    if days.is_empty() {
        s.push_str(r#"<text x="500" y="160" text-anchor="middle">no snapshots</text></svg>"#);
        return s;
    }
    let (pw, ph) = (w - left - right, h - top - bottom);
    // Withheld growth (`Report::withheld`) draws as an empty chart.
    let max_add = nice_max(days.iter().filter_map(|d| d.stored_bytes_added).max().unwrap_or(0) as f64);
    let max_cum = nice_max(days.last().and_then(|d| d.cumulative_bytes).unwrap_or(0) as f64);
    let slot = pw / days.len() as f64;
    for i in 0..=4 {
        let y = top + ph - ph * i as f64 / 4.0;
        write!(s, r##"<line x1="{left}" x2="{}" y1="{y}" y2="{y}" stroke="#e3e6ea"/>"##, w - right).unwrap();
        write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end" class="axis">{}</text>"##,
            left - 6.0,
            y + 4.0,
            short_bytes(max_add * i as f64 / 4.0)
        )
        .unwrap();
        write!(
            s,
            r##"<text x="{}" y="{}" class="axis line-axis">{}</text>"##,
            w - right + 6.0,
            y + 4.0,
            short_bytes(max_cum * i as f64 / 4.0)
        )
        .unwrap();
    }
    let label_every = (days.len() / 10).max(1);
    let mut points = Vec::new();
    for (i, d) in days.iter().enumerate() {
        let x = left + slot * i as f64;
        let bh = ph * d.stored_bytes_added.unwrap_or(0) as f64 / max_add;
        let bw = (slot * 0.7).max(1.0);
        write!(
            s,
            r##"<rect class="bar-added" x="{:.1}" y="{:.1}" width="{bw:.1}" height="{bh:.1}" fill="#4c78a8"><title>{}: +{} ({} snapshots)</title></rect>"##,
            x + slot * 0.15,
            top + ph - bh,
            d.date,
            d.stored_bytes_added.map_or_else(|| "-".into(), human_bytes),
            d.snapshots
        )
        .unwrap();
        if let Some(cum) = d.cumulative_bytes {
            points.push(format!("{:.1},{:.1}", x + slot / 2.0, top + ph - ph * cum as f64 / max_cum));
        }
        if i % label_every == 0 {
            write!(s, r##"<text x="{:.1}" y="{}" text-anchor="middle" class="axis">{}</text>"##, x + slot / 2.0, h - bottom + 18.0, d.date)
                .unwrap();
        }
    }
    write!(s, r##"<polyline points="{}" fill="none" stroke="#f58518" stroke-width="2.5"/>"##, points.join(" ")).unwrap();
    write!(
        s,
        r##"<rect x="{left}" y="{}" width="12" height="12" fill="#4c78a8"/><text x="{}" y="{}" class="axis">stored bytes added per day (left)</text>"##,
        h - 22.0,
        left + 18.0,
        h - 12.0
    )
    .unwrap();
    write!(
        s,
        r##"<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#f58518" stroke-width="2.5"/><text x="{}" y="{}" class="axis">running total (right)</text>"##,
        left + 300.0,
        left + 320.0,
        h - 16.0,
        h - 16.0,
        left + 326.0,
        h - 12.0
    )
    .unwrap();
    s.push_str("</svg>");
    s
}

/// Horizontal bars, each split into a dark and a light part, largest first.
fn split_bars(id: &str, title: &str, rows: &[(String, u64, u64)], dark: &str, light: &str) -> String {
    let (w, row_h, left, right) = (1000.0, 26.0, 260.0, 150.0);
    let h = 40.0 + row_h * rows.len().max(1) as f64;
    let mut s = format!(r#"<svg class="chart" id="{id}" viewBox="0 0 {w} {h}" role="img" aria-label="{}">"#, esc(title));
    let max = nice_max(rows.iter().map(|r| (r.1 + r.2) as f64).fold(0.0, f64::max));
    let pw = w - left - right;
    for (i, (label, a, b)) in rows.iter().enumerate() {
        let y = 10.0 + row_h * i as f64;
        let (wa, wb) = (pw * *a as f64 / max, pw * *b as f64 / max);
        write!(s, r##"<text x="{}" y="{}" text-anchor="end" class="label">{}</text>"##, left - 8.0, y + 15.0, esc(label)).unwrap();
        write!(
            s,
            r##"<rect x="{left}" y="{y}" width="{wa:.1}" height="{}" fill="#4c78a8"><title>{dark}: {}</title></rect>"##,
            row_h - 6.0,
            human_bytes(*a)
        )
        .unwrap();
        write!(
            s,
            r##"<rect x="{:.1}" y="{y}" width="{wb:.1}" height="{}" fill="#a6c8e8"><title>{light}: {}</title></rect>"##,
            left + wa,
            row_h - 6.0,
            human_bytes(*b)
        )
        .unwrap();
        write!(
            s,
            r##"<text x="{:.1}" y="{}" class="axis">{} + {}</text>"##,
            left + wa + wb + 6.0,
            y + 15.0,
            short_bytes(*a as f64),
            short_bytes(*b as f64)
        )
        .unwrap();
    }
    let ly = h - 16.0;
    // The second legend entry starts after the first one's text (~6.5 px per character at 11 px).
    let second = left + 40.0 + 6.5 * dark.chars().count() as f64;
    write!(
        s,
        r##"<rect x="{left}" y="{}" width="12" height="12" fill="#4c78a8"/><text x="{}" y="{ly}" class="axis">{dark}</text><rect x="{}" y="{}" width="12" height="12" fill="#a6c8e8"/><text x="{}" y="{ly}" class="axis">{light}</text></svg>"##,
        ly - 10.0,
        left + 18.0,
        second,
        ly - 10.0,
        second + 18.0
    )
    .unwrap();
    s
}

/// Per group: logical, after dedup, stored — three bars on one scale.
fn dedup_chart(r: &Report) -> String {
    let mut groups: Vec<_> = r.groups.iter().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.logical_bytes));
    groups.truncate(CHART_BARS);
    let (w, left, right, group_h) = (1000.0, 260.0, 150.0, 52.0);
    let h = 50.0 + group_h * groups.len().max(1) as f64;
    let mut s = format!(r#"<svg class="chart" id="chart-dedup" viewBox="0 0 {w} {h}" role="img" aria-label="Dedup by group">"#);
    let max = nice_max(groups.iter().map(|g| g.logical_bytes as f64).fold(0.0, f64::max));
    let pw = w - left - right;
    let series = [("logical", "#bab0ac"), ("after dedup", "#4c78a8"), ("stored", "#54a24b")];
    for (i, g) in groups.iter().enumerate() {
        let y = 10.0 + group_h * i as f64;
        let ratio = g.dedup_ratio.map(|d| format!(" ({d:.1}x)")).unwrap_or_default();
        write!(s, r##"<text x="{}" y="{}" text-anchor="end" class="label">{}{}</text>"##, left - 8.0, y + 26.0, esc(&g.key), ratio)
            .unwrap();
        let values = [Some(g.logical_bytes), g.referenced_raw_bytes, g.referenced_bytes];
        for (j, ((name, colour), v)) in series.iter().zip(values).enumerate() {
            let by = y + 14.0 * j as f64;
            match v {
                Some(v) => {
                    let bw = pw * v as f64 / max;
                    write!(
                        s,
                        r##"<rect x="{left}" y="{by}" width="{bw:.1}" height="12" fill="{colour}"><title>{name}: {}</title></rect>"##,
                        human_bytes(v)
                    )
                    .unwrap();
                    write!(s, r##"<text x="{:.1}" y="{}" class="small">{}</text>"##, left + bw + 4.0, by + 10.0, short_bytes(v as f64))
                        .unwrap();
                }
                None => write!(s, r##"<text x="{left}" y="{}" class="small">{name}: over the scan limit</text>"##, by + 10.0).unwrap(),
            }
        }
    }
    let ly = h - 16.0;
    for (j, (name, colour)) in series.iter().enumerate() {
        let x = left + 160.0 * j as f64;
        write!(
            s,
            r##"<rect x="{x}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{ly}" class="axis">{name}</text>"##,
            ly - 10.0,
            x + 18.0
        )
        .unwrap();
    }
    s.push_str("</svg>");
    s
}

/// The "Restore drills" section: one row per image (a failed last drill in red,
/// never drilled in amber), then the failures with their errors.
fn drills_section(d: &super::drills::Drills) -> String {
    let mut s = String::from("<h2 id=\"drills\">Restore drills</h2>\n");
    if d.images.is_empty() {
        s.push_str("<p class=\"muted\">no images</p>\n");
        return s;
    }
    writeln!(
        s,
        "<div class=\"muted\">{} image(s); {} never drilled; {} whose last drill failed. Seconds: the drill's wall time, the recovery time the repository delivers.</div>",
        d.images.len(),
        d.never_drilled.len(),
        d.last_failed.len()
    )
    .unwrap();
    s.push_str("<table id=\"drill-table\"><tr><th>image</th><th>name</th><th>last drill (UTC)</th><th>result</th><th>host</th><th>seconds</th><th>boot seconds</th><th>last success (UTC)</th><th>drills</th></tr>\n");
    for i in &d.images {
        let image = esc(i.image.image.as_deref().unwrap_or("-"));
        let success = i.last_success.as_ref().map_or_else(|| "never".to_string(), |l| esc(&l.started));
        let row = match &i.last_drill {
            Some(l) => format!(
                "<tr class=\"{}\"><td>{image}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{success}</td><td>{}</td></tr>",
                if l.ok { "drill-ok" } else { "drill-failed" },
                esc(&i.image.name),
                esc(&l.started),
                match l.result {
                    "passed" => "ok",
                    "not_run" => "could not run",
                    _ => "FAILED",
                },
                esc(&l.host),
                l.seconds,
                l.boot_seconds.map_or_else(|| "-".into(), |b| format!("{b:.1}")),
                i.drills
            ),
            None => format!(
                "<tr class=\"drill-never\"><td>{image}</td><td>{}</td><td>never</td><td>-</td><td>-</td><td>-</td><td>-</td><td>{success}</td><td>0</td></tr>",
                esc(&i.image.name)
            ),
        };
        s.push_str(&row);
        s.push('\n');
    }
    s.push_str("</table>\n");
    if !d.last_failed.is_empty() {
        s.push_str("<h3>Last drill failed</h3><ul class=\"drill-failures\">");
        for f in &d.last_failed {
            write!(
                s,
                "<li><b>{}</b> (snapshot {}, {} on {}): {}</li>",
                esc(&f.image.name),
                &f.last_drill.snapshot[..16],
                esc(&f.last_drill.started),
                esc(&f.last_drill.host),
                esc(f.last_drill.error.as_deref().unwrap_or("no error recorded"))
            )
            .unwrap();
        }
        s.push_str("</ul>\n");
    }
    s
}

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1080px;color:#1d2330;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e3e6ea;padding-bottom:4px}
.muted{color:#667085;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin-top:16px}
.card{border:1px solid #e3e6ea;border-radius:8px;padding:10px 12px}.card b{display:block;font-size:20px}.card span{color:#667085;font-size:12px}
.chart{width:100%;height:auto;border:1px solid #eef0f3;border-radius:6px}
.chart text{font-size:12px;fill:#344054}.chart .axis{font-size:11px;fill:#667085}.chart .small{font-size:10px;fill:#344054}
table{border-collapse:collapse;width:100%;font-size:12px}th,td{padding:4px 6px;border-bottom:1px solid #eef0f3;text-align:right}
th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}th{background:#f7f8fa}
tr.drill-failed td{background:#fde8e8}tr.drill-never td{background:#fff6e0}h3{font-size:15px;margin:16px 0 6px}
dl{font-size:12px;columns:2}dt{font-weight:600}dd{margin:0 0 6px 0;color:#475467}
";

pub fn page(r: &Report) -> String {
    let t = &r.totals;
    let title = match &r.project {
        Some(p) => format!("imgarc capacity report — project {}", esc(p)),
        None => "imgarc capacity report".to_string(),
    };
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title><style>{CSS}</style></head><body>\n"
    );
    writeln!(s, "<h1>{title}</h1><div class=\"muted\">generated {}</div>", esc(&r.generated)).unwrap();
    if let Some(why) = &r.reason {
        writeln!(s, "<p class=\"muted\">Withheld ({}): {}</p>", esc(&r.withheld.join(", ")), esc(why)).unwrap();
    }
    s.push_str("<div class=\"cards\">");
    let ratio = |v: Option<f64>| v.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into());
    let mut cards = vec![
        ("snapshots", t.snapshots.to_string()),
        ("logical", human_bytes(t.logical_bytes)),
        ("after dedup", human_bytes(t.deduplicated_bytes)),
        ("stored", human_bytes(t.stored_bytes)),
        ("dedup ratio", ratio(t.dedup_ratio)),
        ("compression ratio", ratio(t.compression_ratio)),
        ("chunks", t.chunks.to_string()),
    ];
    if let Some(u) = t.unreferenced_bytes {
        cards.push(("unreferenced (await prune)", human_bytes(u)));
    }
    if let Some(p) = t.packs {
        cards.push(("packs", p.to_string()));
    }
    for (k, v) in cards {
        write!(s, "<div class=\"card\"><b>{}</b><span>{}</span></div>", esc(&v), esc(k)).unwrap();
    }
    s.push_str("</div>\n<h2>Growth over time</h2>\n");
    s.push_str(&growth_chart(r));
    if let Some(p) = &r.growth.projection {
        let when = match (&p.full_on, p.days_left) {
            (Some(d), Some(n)) => format!("full on <b>{}</b> (in {n:.0} days)", esc(d)),
            _ => "<b>never</b> at the recent rate".into(),
        };
        let rate = p.bytes_per_day.map(|b| format!("{}/day", human_bytes(b.max(0.0) as u64))).unwrap_or_else(|| "-".into());
        writeln!(
            s,
            "<p>Capacity {}: {} used, growing {rate}: {when}. <span class=\"muted\">{}</span></p>",
            human_bytes(p.capacity_bytes),
            human_bytes(p.used_bytes),
            esc(&p.note)
        )
        .unwrap();
    }
    s.push_str("<h2>Top consumers</h2>\n");
    let mut top: Vec<(String, u64, u64)> = if r.groups.is_empty() {
        r.snapshots
            .iter()
            .map(|x| (format!("{} {}", &x.id[..8], x.name), x.unique_bytes.unwrap_or(0), x.shared_bytes.unwrap_or(0)))
            .collect()
    } else {
        r.groups
            .iter()
            .map(|g| match g.unique_bytes {
                Some(u) => (g.key.clone(), u, g.shared_bytes.unwrap_or(0)),
                None => (format!("{} *", g.key), g.members_unique_bytes.unwrap_or(0), 0),
            })
            .collect()
    };
    top.sort_by_key(|t| std::cmp::Reverse((t.1, t.2)));
    top.truncate(CHART_BARS);
    let what = if r.groups.is_empty() { "snapshot" } else { "group" };
    s.push_str(&split_bars(
        "chart-top",
        "Top consumers",
        &top,
        &format!("unique to the {what} (freed by forgetting it)"),
        "shared with others",
    ));
    if r.groups.iter().any(|g| !g.exact) {
        s.push_str("<p class=\"muted\">* over the scan limit (<code>--scan-limit</code>): the members' own unique bytes, a lower bound; shared bytes not computed.</p>\n");
    }
    if !r.groups.is_empty() {
        writeln!(s, "<h2>Dedup by {}</h2>", esc(r.group_by.as_deref().unwrap_or("group"))).unwrap();
        s.push_str(&dedup_chart(r));
        s.push_str("<table><tr><th>group</th><th>snapshots</th><th>logical</th><th>after dedup</th><th>stored</th><th>unique</th><th>shared</th></tr>\n");
        let opt = |v: Option<u64>| v.map(human_bytes).unwrap_or_else(|| "-".into());
        for g in &r.groups {
            writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&g.key),
                g.snapshots,
                human_bytes(g.logical_bytes),
                opt(g.referenced_raw_bytes),
                opt(g.referenced_bytes),
                g.unique_bytes
                    .map(human_bytes)
                    .unwrap_or_else(|| g.members_unique_bytes.map_or_else(|| "-".into(), |m| format!("≥ {}", human_bytes(m)))),
                opt(g.shared_bytes)
            )
            .unwrap();
        }
        s.push_str("</table>\n");
    }
    let mut rows: Vec<_> = r.snapshots.iter().collect();
    rows.sort_by_key(|x| std::cmp::Reverse(x.unique_bytes));
    writeln!(
        s,
        "<h2>Snapshots</h2><div class=\"muted\">{} snapshots; the {} with the most unique bytes</div>",
        rows.len(),
        rows.len().min(TABLE_ROWS)
    )
    .unwrap();
    s.push_str("<table><tr><th>id</th><th>name</th><th>time</th><th>logical</th><th>virtual</th><th>allocated</th><th>referenced</th><th>unique</th><th>shared</th></tr>\n");
    for x in rows.iter().take(TABLE_ROWS) {
        let sizes: String = x.size_columns().iter().map(|c| format!("<td>{c}</td>")).collect();
        writeln!(s, "<tr><td>{}</td><td>{}</td><td>{}</td>{sizes}</tr>", &x.id[..16], esc(&x.name), esc(&x.time)).unwrap();
    }
    s.push_str("</table>\n");
    s.push_str(&drills_section(&r.drills));
    s.push_str("<h2>What the figures mean</h2><dl>");
    for (k, v) in &r.definitions {
        write!(s, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v)).unwrap();
    }
    s.push_str("</dl>\n</body></html>\n");
    s
}
