//! A small SVG of the veth receive cost per contender and size (log scale: iptables grows with
//! its rule count, the others do not).

use std::fmt::Write as _;

use serde_json::Value;

/// Bars of `receive_ns` per lane, grouped by number of sandboxes, from the `veth` JSON.
pub fn veth_svg(veth: &Value) -> String {
    let lanes = ["tcx", "nft", "iptables", "forward"];
    let colors = ["#2b8a3e", "#1c7ed6", "#e8590c", "#868e96"];
    let groups: Vec<(u64, Vec<f64>)> = veth["flood"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|g| {
                    let n = g["sandboxes"].as_u64().unwrap_or(0);
                    let v = lanes
                        .iter()
                        .map(|l| {
                            g["lanes"]
                                .as_array()
                                .and_then(|ls| ls.iter().find(|x| x["lane"] == *l))
                                .and_then(|x| x["receive_ns"].as_f64())
                                .unwrap_or(0.0)
                        })
                        .collect();
                    (n, v)
                })
                .collect()
        })
        .unwrap_or_default();
    let (w, h, left, bottom, top) = (760.0, 320.0, 70.0, 40.0, 40.0);
    let max = groups.iter().flat_map(|g| g.1.iter().copied()).fold(10.0, f64::max);
    let decades = max.log10().ceil().max(2.0);
    let y = |v: f64| top + (h - top - bottom) * (1.0 - (v.max(10.0).log10() - 1.0) / (decades - 1.0));
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="20" font-size="14">SYN flood through the sandbox veth: CPU ns per packet beyond the generator (log scale)</text>"#
    );
    for d in 1..=decades as i32 {
        let v = 10f64.powi(d);
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            w - 10.0,
            left - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    let gw = (w - left - 10.0) / groups.len().max(1) as f64;
    let bw = gw / (lanes.len() as f64 + 1.5);
    for (gi, (n, vals)) in groups.iter().enumerate() {
        let x0 = left + gi as f64 * gw + bw * 0.75;
        for (li, v) in vals.iter().enumerate() {
            let x = x0 + li as f64 * bw;
            let yv = y(*v);
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{yv:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {n}: {v:.0} ns</title></rect>"#,
                bw * 0.9,
                (h - bottom - yv).max(0.0),
                colors[li],
                lanes[li]
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{n} sandboxes</text>"#,
            x0 + bw * 2.0,
            h - bottom + 16.0
        );
    }
    for (li, l) in lanes.iter().enumerate() {
        let x = left + 10.0 + li as f64 * 120.0;
        let _ = write!(
            s,
            r#"<rect x="{x}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            h - 14.0,
            colors[li],
            x + 14.0,
            h - 5.0,
            if *l == "tcx" { "gateway tcx" } else { l }
        );
    }
    s.push_str("</svg>\n");
    s
}
