//! What the command-line programs of the workspace (`artifacts-gen`, `neco`, `neco-updater`,
//! `neco-worker`, `xtask`, the benchmarks) share at their edges: the `--log-format` option and
//! the `tracing` set-up behind it, TOML text parsed with errors that carry a line and a column,
//! and Markdown tables for reports.
//!
//! It must not depend on any crate of this workspace, so every program can use it.

/// Log format on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Logs to stderr, human-readable or JSON lines; `RUST_LOG` filters (default `info`). A
/// second call changes nothing.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Fails only when a subscriber is set already: keep that one.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// A TOML text that does not parse into the expected shape: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct TomlError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in bytes.
    pub column: usize,
    pub message: String,
}

/// Parses TOML text into `T`; an error names the line and column it points at (1, 1 when the
/// parser gives no position).
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TomlError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_column(text, span.start))
            .unwrap_or((1, 1));
        TomlError {
            line,
            column,
            message: e.message().to_owned(),
        }
    })
}

/// A Markdown table with aligned columns, one `| … |` line per row after the header and its
/// rule, each line ending in a newline.
pub fn markdown_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let header = header.map(str::to_owned);
    let mut widths = [0; N];
    for row in std::iter::once(&header).chain(rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |row: &[String; N]| {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = line(&header);
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        count: u32,
    }

    #[test]
    fn line_and_column_of_offsets() {
        for (text, offset, expected) in [
            ("", 0, (1, 1)),
            ("abc", 2, (1, 3)),
            ("a\nbc", 2, (2, 1)),
            ("a\nbc", 3, (2, 2)),
            ("a\n\n", 3, (3, 1)),
            ("abc", 99, (1, 4)),
        ] {
            assert_eq!(line_column(text, offset), expected, "{text:?} at {offset}");
        }
    }

    #[test]
    fn markdown_tables_align_their_columns() {
        let rows = [
            ["a".to_owned(), "1.5 ms".to_owned()],
            ["longer".to_owned(), "2 ms".to_owned()],
        ];
        assert_eq!(
            markdown_table(["what", "time"], &rows),
            "| what   | time   |\n\
             | ------ | ------ |\n\
             | a      | 1.5 ms |\n\
             | longer | 2 ms   |\n"
        );
    }

    #[test]
    fn errors_point_at_the_bad_value() {
        let err = parse_toml::<Doc>("name = \"x\"\ncount = \"three\"\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 9), "{err}");
        assert!(err.to_string().starts_with("line 2, column 9: "), "{err}");
        let err = parse_toml::<Doc>("name = \"x\"\n").unwrap_err();
        assert!(err.message.contains("count"), "{err}");
        assert!(parse_toml::<Doc>("name = \"x\"\ncount = 3\n").is_ok());
    }
}
