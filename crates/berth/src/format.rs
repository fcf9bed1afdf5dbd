//! Output formatting as Docker prints it: human sizes and durations, tables, and `--format` templates.

use serde_json::Value;

use crate::template::{text_of, Program};

/// Decimal sizes as Docker prints them (`4.26MB`, `1.2GB`, `512B`).
pub fn human_size(bytes: u64) -> String {
    size_in_units(bytes, 1000.0, &DECIMAL_UNITS, 4)
}

/// A size as `docker images` and `docker history` print it: three significant digits
/// (`units.HumanSizeWithPrecision(size, 3)`), so 1984319 bytes is `1.98MB` where [`human_size`]
/// says `1.984MB`.
pub fn image_size(bytes: u64) -> String {
    size_in_units(bytes, 1000.0, &DECIMAL_UNITS, 3)
}

/// A size in binary units as Docker's `BytesSize` writes it (`504KiB`, `64MiB`, `1.953GiB`): memory
/// in `stats`.
pub fn binary_size(bytes: u64) -> String {
    size_in_units(bytes, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB", "PiB"], 4)
}

const DECIMAL_UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];

/// Go's `units.CustomSize("%.<precision>g%s", …)`: the value in the largest unit under which it
/// stays below `step`.
fn size_in_units(bytes: u64, step: f64, units: &[&str], precision: usize) -> String {
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= step && unit < units.len() - 1 {
        value /= step;
        unit += 1;
    }
    format!("{}{}", go_g(value, precision), units[unit])
}

/// Go's `%.<precision>g` of a non-negative number: rounded to that many significant digits,
/// trailing zeros dropped, in exponent form once the exponent reaches the precision (999.7 at
/// three digits is `1e+03`, as Docker prints it).
fn go_g(value: f64, precision: usize) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let trim = |s: &str| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    // Rounded to the precision first, as Go does, to find the exponent.
    let sci = format!("{value:.*e}", precision.saturating_sub(1));
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if exponent < -4 || exponent >= precision as i32 {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim(mantissa), exponent.abs());
    }
    let decimals = (precision as i32 - 1 - exponent).max(0) as usize;
    trim(&format!("{value:.decimals$}"))
}

/// Go's `units.HumanDuration`, which Docker uses for "Up 5 minutes" and "2 hours ago".
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", s / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", s / 3600),
        172_800..=1_209_599 => format!("{} days", s / 86_400),
        1_209_600..=5_183_999 => format!("{} weeks", s / 604_800),
        5_184_000..=63_071_999 => format!("{} months", s / 2_592_000),
        _ => format!("{} years", s / 31_536_000),
    }
}

/// Seconds since an RFC 3339 time (0 for unparsable).
pub fn seconds_since(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        .unwrap_or(0)
}

/// Prints rows as a table with columns padded like Docker's tabwriter (3 spaces between columns).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
    print!("{out}");
}

/// A `--format` template: Go's text/template with Docker's functions (see [`crate::template`]), plus
/// Docker's conventions around it: a leading `table` asks for a header row and aligned columns, and the
/// two-character escapes `\t` and `\n` are turned into a tab and a newline before parsing.
pub struct Template {
    program: Program,
    /// Whether it started with `table`.
    pub table: bool,
}

impl Template {
    /// Parses a template; syntax errors, unknown functions and undefined variables are errors.
    pub fn parse(input: &str) -> anyhow::Result<Self> {
        let (table, body) = match input.strip_prefix("table") {
            Some(rest) => (true, rest.trim_start()),
            None => (false, input),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        Ok(Self {
            program: Program::parse(&body)?,
            table,
        })
    }

    /// Renders against one value; a runtime error (a field of a string, an index out of range, …) is
    /// an error, as Docker stops on one too.
    pub fn render(&self, value: &Value) -> anyhow::Result<String> {
        self.program.execute(value)
    }

    /// The header row for `table` templates: for each action, `names` of the first field it references
    /// (Docker's column names), with the text between actions kept.
    pub fn header(&self, names: &dyn Fn(&str) -> String) -> String {
        self.program.header(names)
    }
}

/// Prints `rows` with a `--format` template, or as a table with the given default columns.
pub fn print_rows(
    format: Option<&str>,
    header: &[&str],
    fields: &[&str],
    rows: &[Value],
) -> anyhow::Result<()> {
    match format {
        Some("json") => {
            for row in rows {
                println!("{}", serde_json::to_string(row)?);
            }
        }
        Some(f) if f != "table" => {
            let t = Template::parse(f)?;
            let mut lines = Vec::new();
            if t.table {
                let name_of = |field: &str| {
                    fields
                        .iter()
                        .position(|x| *x == field)
                        .map(|i| header[i].to_string())
                        .unwrap_or_else(|| field.to_uppercase())
                };
                lines.push(t.header(&name_of));
            }
            for row in rows {
                lines.push(t.render(row)?);
            }
            if t.table {
                print_tabbed(&lines);
            } else {
                for l in lines {
                    println!("{l}");
                }
            }
        }
        _ => {
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    fields
                        .iter()
                        .map(|f| text_of(r.get(*f).unwrap_or(&Value::Null)))
                        .collect()
                })
                .collect();
            print_table(header, &table);
        }
    }
    Ok(())
}

/// Prints `inspect` documents: each through a `--format` template (`json`: each as one line of JSON),
/// or all as one pretty JSON array.
pub fn print_documents(format: Option<&str>, docs: &[Value]) -> anyhow::Result<()> {
    match format {
        // Docker's shorthand for `{{json .}}`, as in listings.
        Some("json") => {
            for d in docs {
                println!("{}", serde_json::to_string(d)?);
            }
        }
        Some(f) => {
            let t = Template::parse(f)?;
            for d in docs {
                println!("{}", t.render(d)?);
            }
        }
        None => println!("{}", serde_json::to_string_pretty(docs)?),
    }
    Ok(())
}

/// Aligns tab-separated lines into columns (Docker's tabwriter for `table` templates).
fn print_tabbed(lines: &[String]) {
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect();
    let Some((head, rest)) = rows.split_first() else {
        return;
    };
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    print_table(&head, rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_260_000), "4.26MB");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(12_345_678), "12.35MB");
        assert_eq!(human_size(123_456_789), "123.5MB");
        assert_eq!(image_size(0), "0B");
        assert_eq!(image_size(512), "512B");
        assert_eq!(image_size(1_984_319), "1.98MB");
        assert_eq!(image_size(2_000_000), "2MB");
        assert_eq!(image_size(12_345_678), "12.3MB");
        assert_eq!(image_size(123_456_789), "123MB");
        // Go's %g takes an exponent once rounding reaches the precision.
        assert_eq!(image_size(999_700), "1e+03kB");
        assert_eq!(binary_size(0), "0B");
        assert_eq!(binary_size(504 * 1024), "504KiB");
        assert_eq!(binary_size(64 << 20), "64MiB");
        assert_eq!(binary_size(2_097_152_000), "1.953GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(3 * 3600), "3 hours");
    }

    #[test]
    fn templates() {
        let v = json!({"ID": "abc", "State": {"Status": "running"}, "Labels": {"k": "v"}});
        assert_eq!(
            Template::parse("{{.ID}}\\t{{.State.Status}}")
                .unwrap()
                .render(&v)
                .unwrap(),
            "abc\trunning"
        );
        assert_eq!(
            Template::parse("{{json .State}}")
                .unwrap()
                .render(&v)
                .unwrap(),
            r#"{"Status":"running"}"#
        );
        assert_eq!(
            Template::parse(r#"{{index .Labels "k"}}"#)
                .unwrap()
                .render(&v)
                .unwrap(),
            "v"
        );
        assert_eq!(
            Template::parse("{{.Missing}}").unwrap().render(&v).unwrap(),
            "<no value>"
        );
        assert!(Template::parse("{{.ID").is_err());
        assert!(Template::parse("{{range .X}}").is_err());
        assert!(Template::parse("{{nosuch .X}}").is_err());
        assert!(Template::parse("{{.ID.X}}").unwrap().render(&v).is_err());
    }

    #[test]
    fn template_table_header() {
        let t =
            Template::parse("table {{.ID}}\\t{{.Label \"a\"}}\\t{{if .Running}}y{{end}}").unwrap();
        assert!(t.table);
        let names = |f: &str| match f {
            "ID" => "CONTAINER ID".to_string(),
            other => other.to_uppercase(),
        };
        assert_eq!(t.header(&names), "CONTAINER ID\tLABEL\tRUNNING");
        let row = json!({"ID": "abc", "Labels": "a=1,b=2", "Running": true});
        assert_eq!(t.render(&row).unwrap(), "abc\t1\ty");
    }
}
