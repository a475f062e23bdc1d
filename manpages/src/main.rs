//! `manpages DIR`: writes the man pages of `neco` (section 1, with one page per subcommand),
//! `neco-updater` and `neco-worker` (section 8) into DIR, rendered from the same clap
//! definitions the binaries parse (`neco::cli`, `updater::cli`, `worker::cli`).
//!
//! The output is deterministic: the footer carries the version given with `--version` and,
//! only when `SOURCE_DATE_EPOCH` is set, that day's date. `cargo xtask release` runs it and
//! compresses the pages into the Debian package.

use anyhow::{bail, Context as _};
use clap::{CommandFactory as _, Parser};
use std::path::PathBuf;
use std::process::ExitCode;

/// Write the man pages of neco, neco-updater and neco-worker into a directory.
#[derive(Debug, Parser)]
#[command(name = "manpages")]
struct Args {
    /// Directory to write the pages into (created when missing).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Version shown in each page's footer (the Debian package version); default: the version
    /// of the crates.
    #[arg(long, value_name = "VERSION")]
    version: Option<String>,
}

/// A rendered page: its file name (`neco-config-set.1`) and its roff text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Page {
    file_name: String,
    roff: Vec<u8>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("manpages: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => Some(date_of_epoch(&epoch)?),
        Err(std::env::VarError::NotPresent) => None,
        Err(e) => bail!("SOURCE_DATE_EPOCH: {e}"),
    };
    let version = args
        .version
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    for page in pages(&version, date.as_deref())? {
        let path = args.dir.join(&page.file_name);
        std::fs::write(&path, &page.roff)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `YYYY-MM-DD` (UTC) of a `SOURCE_DATE_EPOCH` value.
fn date_of_epoch(epoch: &str) -> anyhow::Result<String> {
    let seconds: i64 = epoch
        .trim()
        .parse()
        .with_context(|| format!("SOURCE_DATE_EPOCH {epoch:?} is not a number of seconds"))?;
    let when = time::OffsetDateTime::from_unix_timestamp(seconds)
        .with_context(|| format!("SOURCE_DATE_EPOCH {epoch:?} is out of range"))?;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Ok(when.format(&format)?)
}

/// Every page: `neco` and its subcommands in section 1, the daemons in section 8.
fn pages(version: &str, date: Option<&str>) -> anyhow::Result<Vec<Page>> {
    let mut pages = Vec::new();
    let mut neco = neco::cli::Cli::command();
    neco.build();
    render_tree(&neco, "1", version, date, &mut pages)?;
    for mut daemon in [updater::cli::Cli::command(), worker::cli::Cli::command()] {
        daemon.build();
        render_tree(&daemon, "8", version, date, &mut pages)?;
    }
    Ok(pages)
}

/// Renders `cmd` and, recursively, its subcommands (without clap's generated `help`).
fn render_tree(
    cmd: &clap::Command,
    section: &str,
    version: &str,
    date: Option<&str>,
    pages: &mut Vec<Page>,
) -> anyhow::Result<()> {
    // After `build()`, a subcommand's display name is its full path: `neco-config-set`.
    let title = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_owned();
    // The crates' version (`--version` of the binaries) is not the package's: leave it to the
    // footer, which names the package version.
    let cmd = cmd.clone().version(None::<&'static str>);
    let mut man = clap_mangen::Man::new(cmd.clone())
        .title(title.to_uppercase())
        .section(section)
        .source(format!("neco {version}"))
        .manual("neco-rs");
    if let Some(date) = date {
        man = man.date(date);
    }
    let mut roff = Vec::new();
    man.render(&mut roff)
        .with_context(|| format!("cannot render the page of {title}"))?;
    pages.push(Page {
        file_name: format!("{title}.{section}"),
        roff,
    });
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" || sub.is_hide_set() {
            continue;
        }
        render_tree(sub, section, version, date, pages)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(page: &Page) -> String {
        String::from_utf8(page.roff.clone()).unwrap()
    }

    #[test]
    fn every_binary_and_subcommand_has_a_page() {
        let pages = pages("2026.11.26-1", None).unwrap();
        let names: Vec<&str> = pages.iter().map(|p| p.file_name.as_str()).collect();
        for expected in [
            "neco.1",
            "neco-config.1",
            "neco-config-set.1",
            "neco-config-get.1",
            "neco-status.1",
            "neco-recover.1",
            "neco-setup.1",
            "neco-join.1",
            "neco-leave.1",
            "neco-updater.8",
            "neco-worker.8",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let worker = pages
            .iter()
            .find(|p| p.file_name == "neco-worker.8")
            .unwrap();
        let worker = text(worker);
        assert!(worker.contains(".TH NECO-WORKER 8"), "{worker}");
        assert!(worker.contains("service\\-manager"), "{worker}");
        assert!(worker.contains("\"neco 2026.11.26-1\""), "{worker}");
        assert!(!worker.contains("0.1.0"), "{worker}");
    }

    #[test]
    fn output_is_deterministic_and_dated_only_by_source_date_epoch() {
        let undated = pages("1", None).unwrap();
        assert_eq!(undated, pages("1", None).unwrap());
        let dated = pages("1", Some(&date_of_epoch("1795680070").unwrap())).unwrap();
        let neco = text(&dated[0]);
        assert!(neco.contains(".TH NECO 1 2026-11-26 "), "{neco}");
        assert!(!text(&undated[0]).contains("2026"), "{}", text(&undated[0]));
    }

    #[test]
    fn bad_epochs_are_refused() {
        assert_eq!(date_of_epoch("0").unwrap(), "1970-01-01");
        assert!(date_of_epoch("yesterday").is_err());
        assert!(date_of_epoch("99999999999999999").is_err());
    }

    #[test]
    fn pages_are_written_into_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args {
            dir: dir.path().join("man"),
            version: Some("2026.11.26-1".into()),
        };
        run(&args).unwrap();
        assert!(dir.path().join("man/neco.1").is_file());
        assert!(dir.path().join("man/neco-updater.8").is_file());
    }
}
