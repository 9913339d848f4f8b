//! What the CLI prints for people and scripts: aligned tables like kubectl's, CSV and JSON renderings of
//! usage reports. The ledger computes; this module only lays out. Every report shows the tenant's amount,
//! the vendor's cost behind it and the margin between them.

use crate::ledger::format_amount;
use crate::ledger::report::{cost_totals, totals};
use crate::ledger::store::UsageRow;

/// Output format of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Comma-separated values with a header.
    Csv,
    /// A JSON array.
    Json,
}

/// Renders report rows.
pub fn render(rows: &[UsageRow], format: Format) -> String {
    match format {
        Format::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({"key": r.key, "meter": r.meter, "quantity": r.quantity,
                                       "amount": format_amount(r.amount_nanos), "currency": r.currency,
                                       "cost": format_amount(r.cost_nanos),
                                       "margin": format_amount(r.amount_nanos - r.cost_nanos)})
                })
                .collect();
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
        }
        Format::Csv => csv(&cells(rows, COLUMNS.map(str::to_lowercase))),
        Format::Table => {
            let mut cells = cells(rows, COLUMNS.map(String::from));
            let costs = cost_totals(rows);
            for (currency, total) in totals(rows) {
                let cost = costs.get(&currency).copied().unwrap_or_default();
                cells.push(vec![
                    "TOTAL".into(),
                    String::new(),
                    String::new(),
                    format_amount(total),
                    currency,
                    format_amount(cost),
                    format_amount(total - cost),
                ]);
            }
            table(&cells)
        }
    }
}

/// The columns of a usage report.
const COLUMNS: [&str; 7] = [
    "KEY", "METER", "QUANTITY", "AMOUNT", "CURRENCY", "COST", "MARGIN",
];

/// A usage report's cells: the `header`, then one line per row.
fn cells(rows: &[UsageRow], header: [String; 7]) -> Vec<Vec<String>> {
    let mut cells = vec![header.to_vec()];
    cells.extend(rows.iter().map(|r| {
        vec![
            r.key.clone(),
            r.meter.clone(),
            r.quantity.to_string(),
            format_amount(r.amount_nanos),
            r.currency.clone(),
            format_amount(r.cost_nanos),
            format_amount(r.amount_nanos - r.cost_nanos),
        ]
    }));
    cells
}

/// Rows as CSV (RFC 4180), the one CSV writer of every command: a field holding a comma, a quote or a
/// line break is quoted, its quotes doubled; lines end with `\n`.
pub fn csv(rows: &[Vec<String>]) -> String {
    let field = |s: &String| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.clone()
        }
    };
    rows.iter()
        .map(|r| r.iter().map(field).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

/// Left-aligned columns separated by three spaces, like kubectl.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, amount: i64) -> UsageRow {
        UsageRow {
            key: key.into(),
            meter: "vm_seconds".into(),
            quantity: 3600,
            amount_nanos: amount,
            cost_nanos: amount * 4 / 5,
            currency: "USD".into(),
        }
    }

    #[test]
    fn formats() {
        let rows = vec![
            row("VirtualMachine/web", 5_950_000),
            row("VirtualMachine/a,b", 23_800_000),
        ];
        let t = render(&rows, Format::Table);
        assert!(
            t.lines().last().unwrap().starts_with("TOTAL") && t.contains("0.02975"),
            "{t}"
        );
        let c = render(&rows, Format::Csv);
        assert!(
            c.contains("\"VirtualMachine/a,b\",vm_seconds,3600,0.0238,USD"),
            "{c}"
        );
        assert!(c.contains(",USD,0.01904,0.00476"), "cost and margin: {c}");
        let j: serde_json::Value = serde_json::from_str(&render(&rows, Format::Json)).unwrap();
        assert_eq!(j[0]["amount"], "0.00595");
        assert_eq!(
            (&j[0]["cost"], &j[0]["margin"]),
            (&"0.00476".into(), &"0.00119".into())
        );
        let total: Vec<&str> = t.lines().last().unwrap().split_whitespace().collect();
        assert_eq!(total[total.len() - 2..], ["0.0238", "0.00595"], "{t}");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&[
            vec!["A".into(), "LONGER".into()],
            vec!["wide cell".into(), "x".into()],
        ]);
        assert_eq!(t, "A           LONGER\nwide cell   x\n");
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let rows = vec![
            vec!["received".to_string(), "payload".into()],
            vec!["1".into(), "plain".into()],
            vec!["2".into(), "a,b \"c\"\r\nd".into()],
        ];
        assert_eq!(
            csv(&rows),
            "received,payload\n1,plain\n2,\"a,b \"\"c\"\"\r\nd\"\n"
        );
    }
}
