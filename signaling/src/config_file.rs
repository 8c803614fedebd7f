//! The server's configuration file: a TOML table whose keys are the long flag names, written
//! with `_` for `-` (`http_addr = "0.0.0.0:8443"` for `--http-addr 0.0.0.0:8443`).
//!
//! Every option the command line takes can come from the file. What the command line says wins,
//! then the environment (`MEET_…`), then the file, then the built-in default. A key that names
//! no option is an error, so that a typo is not silently ignored.
//!
//! The file is applied by rewriting the command line: each of its keys whose option the command
//! line and the environment left unset becomes a flag in front of the given arguments, and the
//! result is parsed once more. Every option thus goes through the same parser, validation and
//! help, whichever source it came from.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// The id of the option naming the file (`--config`). It cannot itself be set in a file.
pub const CONFIG_ARG: &str = "config";

/// A configuration file that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("reading the configuration file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("the configuration file {0} is not valid TOML: {1}")]
    Parse(PathBuf, toml::de::Error),
    #[error(
        "unknown key `{key}` in the configuration file {path}{hint}: the keys are the long \
         option names of `--help`, written with `_` for `-`"
    )]
    UnknownKey {
        path: PathBuf,
        key: String,
        /// ` (did you mean `…`?)`, or empty.
        hint: String,
    },
    #[error("the configuration file {path}: `{key}` {reason}")]
    BadValue {
        path: PathBuf,
        key: String,
        reason: &'static str,
    },
}

/// What [`merge_args`] could not do.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The command line itself asked for help or the version, which the caller prints
    /// ([`clap::Error::exit`]).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error(transparent)]
    File(#[from] ConfigFileError),
}

/// The command line with a configuration file's values applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The arguments to parse: the program name, the file's flags, then the given arguments.
    pub args: Vec<OsString>,
    /// The file read, if any.
    pub path: Option<PathBuf>,
    /// The file's keys that were applied (those the command line and environment left unset).
    pub applied: Vec<String>,
}

/// Finds the configuration file that `args` (or the environment) names through
/// [`CONFIG_ARG`], and returns `args` with the file's values put in as flags for every option
/// that neither the command line nor the environment set. Without a file, `args` unchanged.
///
/// Errors in the arguments themselves are left for the caller's own parse of
/// [`Merged::args`] to report, except requests for help or the version, returned as
/// [`MergeError::Cli`] so that they are answered before any file is read.
pub fn merge_args(command: &Command, args: Vec<OsString>) -> Result<Merged, MergeError> {
    let matches = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(args.iter().cloned())?;
    let Some(path) = matches
        .get_raw(CONFIG_ARG)
        .and_then(|mut values| values.next())
        .map(PathBuf::from)
    else {
        return Ok(Merged {
            args,
            path: None,
            applied: Vec::new(),
        });
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| ConfigFileError::Read(path.clone(), e))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| ConfigFileError::Parse(path.clone(), e))?;
    let (flags, applied) = file_flags(command, &matches, &table, &path)?;
    let mut merged = Vec::with_capacity(args.len() + flags.len());
    let mut given = args.into_iter();
    // The program name stays first; the file's flags go before everything the caller gave, so
    // that they are read as options of the command itself, never of a subcommand.
    merged.extend(given.next());
    merged.extend(flags);
    merged.extend(given);
    Ok(Merged {
        args: merged,
        path: Some(path),
        applied,
    })
}

/// The flags for `table`'s keys whose options `matches` (the command line and environment)
/// left unset, and those keys.
fn file_flags(
    command: &Command,
    matches: &ArgMatches,
    table: &toml::Table,
    path: &Path,
) -> Result<(Vec<OsString>, Vec<String>), ConfigFileError> {
    let bad = |key: &str, reason| ConfigFileError::BadValue {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    let mut flags = Vec::new();
    let mut applied = Vec::new();
    for (key, value) in table {
        let arg = command.get_arguments().find(|arg| {
            arg.get_id() != CONFIG_ARG
                && arg.get_long().is_some_and(|long| {
                    long != "help" && long != "version" && long.replace('-', "_") == *key
                })
        });
        let Some(arg) = arg else {
            if key == CONFIG_ARG {
                return Err(bad(key, "cannot be set in a configuration file"));
            }
            return Err(ConfigFileError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
                hint: suggestion(command, key),
            });
        };
        let Some(long) = arg.get_long() else {
            continue;
        };
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        if !arg.get_action().takes_values() {
            // A switch (`--open-rooms`): on or off.
            match value {
                toml::Value::Boolean(true) => flags.push(OsString::from(format!("--{long}"))),
                toml::Value::Boolean(false) => {}
                _ => return Err(bad(key, "must be true or false")),
            }
            applied.push(key.clone());
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => {
                if !matches!(arg.get_action(), ArgAction::Append) {
                    return Err(bad(key, "takes one value, not a list"));
                }
                items
                    .iter()
                    .map(|item| scalar(item).ok_or_else(|| bad(key, "must be a list of values")))
                    .collect::<Result<Vec<_>, _>>()?
            }
            other => {
                vec![scalar(other).ok_or_else(|| bad(key, "must be a string, number or boolean"))?]
            }
        };
        // `--name=value`, so that a value starting with `-` is not taken for an option.
        flags.extend(
            values
                .into_iter()
                .map(|value| OsString::from(format!("--{long}={value}"))),
        );
        applied.push(key.clone());
    }
    Ok((flags, applied))
}

/// A string, number or boolean as the command line would spell it.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

/// ` (did you mean `…`?)` for a key that is an option's name spelled with `-`, or close to
/// one; empty otherwise.
fn suggestion(command: &Command, key: &str) -> String {
    let wanted = key.replace('-', "_").to_ascii_lowercase();
    command
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !matches!(*long, "help" | "version" | CONFIG_ARG))
        .map(|long| long.replace('-', "_"))
        .filter(|name| *name == wanted || edit_distance(name, &wanted) <= 2)
        .min_by_key(|name| edit_distance(name, &wanted))
        .map(|name| format!(" (did you mean `{name}`?)"))
        .unwrap_or_default()
}

/// Levenshtein distance between two short ASCII names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    /// A command shaped like the server's: values with and without defaults, a switch, a list,
    /// a global option and a subcommand.
    fn command() -> Command {
        Command::new("meet-server")
            .arg(
                Arg::new(CONFIG_ARG)
                    .long("config")
                    .global(true)
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                Arg::new("http_addr")
                    .long("http-addr")
                    .default_value("127.0.0.1:8443"),
            )
            .arg(Arg::new("advertise_addr").long("advertise-addr"))
            .arg(
                Arg::new("data_dir")
                    .long("data-dir")
                    .default_value("data")
                    .global(true),
            )
            .arg(
                Arg::new("open_rooms")
                    .long("open-rooms")
                    .action(ArgAction::SetTrue),
            )
            .arg(
                Arg::new("tls_names")
                    .long("tls-name")
                    .action(ArgAction::Append)
                    .value_delimiter(','),
            )
            .arg(
                Arg::new("workers")
                    .long("media-workers")
                    .value_parser(clap::value_parser!(usize)),
            )
            .subcommand(
                Command::new("admin").arg(Arg::new("username").long("username").required(true)),
            )
    }

    /// A temporary file holding `text`, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(text: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "meet-config-unit-{}-{}.toml",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).expect("temp file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn args(file: &TempFile, rest: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["meet-server".into(), "--config".into()];
        args.push(file.0.clone().into_os_string());
        args.extend(rest.iter().map(OsString::from));
        args
    }

    /// Parses what [`merge_args`] made of `args`.
    fn parse(args: Vec<OsString>) -> ArgMatches {
        let merged = merge_args(&command(), args).expect("merged");
        command().try_get_matches_from(merged.args).expect("parses")
    }

    fn one(matches: &ArgMatches, id: &str) -> Option<String> {
        matches.get_one::<String>(id).cloned()
    }

    #[test]
    fn without_a_file_the_arguments_are_unchanged() {
        let given: Vec<OsString> = ["meet-server", "--http-addr", "0.0.0.0:1"]
            .iter()
            .map(OsString::from)
            .collect();
        let merged = merge_args(&command(), given.clone()).expect("merged");
        assert_eq!(merged.args, given);
        assert_eq!(merged.path, None);
    }

    #[test]
    fn the_file_fills_what_the_command_line_left_unset() {
        let file = TempFile::new(
            "http_addr = \"0.0.0.0:8443\"\nadvertise_addr = \"192.0.2.1:10000\"\n\
             open_rooms = true\ntls_name = [\"meet.example\", \"192.0.2.1\"]\nmedia_workers = 3\n",
        );
        let matches = parse(args(&file, &[]));
        assert_eq!(one(&matches, "http_addr").as_deref(), Some("0.0.0.0:8443"));
        assert_eq!(
            one(&matches, "advertise_addr").as_deref(),
            Some("192.0.2.1:10000")
        );
        assert!(matches.get_flag("open_rooms"));
        let names: Vec<&String> = matches
            .get_many::<String>("tls_names")
            .expect("names")
            .collect();
        assert_eq!(names, ["meet.example", "192.0.2.1"]);
        assert_eq!(matches.get_one::<usize>("workers"), Some(&3));
        // What the file does not name keeps its default.
        assert_eq!(one(&matches, "data_dir").as_deref(), Some("data"));
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let file = TempFile::new(
            "http_addr = \"0.0.0.0:8443\"\ndata_dir = \"/from/file\"\ntls_name = \"file.example\"\n",
        );
        let matches = parse(args(
            &file,
            &["--http-addr", "127.0.0.1:9", "--tls-name", "flag.example"],
        ));
        assert_eq!(one(&matches, "http_addr").as_deref(), Some("127.0.0.1:9"));
        let names: Vec<&String> = matches
            .get_many::<String>("tls_names")
            .expect("names")
            .collect();
        assert_eq!(names, ["flag.example"]);
        assert_eq!(one(&matches, "data_dir").as_deref(), Some("/from/file"));
    }

    #[test]
    fn a_global_option_given_to_a_subcommand_wins_over_the_file() {
        let file = TempFile::new("data_dir = \"/from/file\"\n");
        let matches = parse(args(
            &file,
            &["admin", "--username", "a", "--data-dir", "/from/flag"],
        ));
        let (_, admin) = matches.subcommand().expect("admin");
        assert_eq!(one(admin, "data_dir").as_deref(), Some("/from/flag"));
        assert_eq!(one(&matches, "data_dir").as_deref(), Some("/from/flag"));

        // And the file's value reaches the subcommand when the command line says nothing,
        // even with `--config` given after the subcommand.
        let mut given: Vec<OsString> = ["meet-server", "admin", "--username", "a", "--config"]
            .iter()
            .map(OsString::from)
            .collect();
        given.push(file.0.clone().into_os_string());
        let matches = parse(given);
        let (_, admin) = matches.subcommand().expect("admin");
        assert_eq!(one(admin, "data_dir").as_deref(), Some("/from/file"));
    }

    #[test]
    fn a_switch_set_false_in_the_file_stays_off() {
        let file = TempFile::new("open_rooms = false\n");
        assert!(!parse(args(&file, &[])).get_flag("open_rooms"));
        let file = TempFile::new("open_rooms = \"yes\"\n");
        let err = merge_args(&command(), args(&file, &[])).expect_err("not a boolean");
        assert!(
            err.to_string()
                .contains("`open_rooms` must be true or false"),
            "{err}"
        );
    }

    #[test]
    fn a_value_starting_with_a_dash_stays_a_value() {
        let file = TempFile::new("advertise_addr = \"-x\"\n");
        assert_eq!(
            one(&parse(args(&file, &[])), "advertise_addr").as_deref(),
            Some("-x")
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let file = TempFile::new("http_adr = \"0.0.0.0:8443\"\n");
        let err = merge_args(&command(), args(&file, &[])).expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("unknown key `http_adr`"), "{text}");
        assert!(text.contains("did you mean `http_addr`"), "{text}");

        let file = TempFile::new("http-addr = \"0.0.0.0:8443\"\n");
        let text = merge_args(&command(), args(&file, &[]))
            .expect_err("kebab-case key")
            .to_string();
        assert!(text.contains("did you mean `http_addr`"), "{text}");

        for key in ["config", "help", "version", "username", "tls_names"] {
            let file = TempFile::new(&format!("{key} = \"x\"\n"));
            let text = merge_args(&command(), args(&file, &[]))
                .expect_err(key)
                .to_string();
            assert!(text.contains(&format!("`{key}`")), "{text}");
        }
    }

    #[test]
    fn lists_tables_and_bad_files_are_errors() {
        for (text, wanted) in [
            (
                "http_addr = [\"a\", \"b\"]\n",
                "takes one value, not a list",
            ),
            (
                "[http_addr]\nx = 1\n",
                "must be a string, number or boolean",
            ),
            ("http_addr = \"unterminated\n", "not valid TOML"),
        ] {
            let file = TempFile::new(text);
            let err = merge_args(&command(), args(&file, &[])).expect_err(text);
            assert!(err.to_string().contains(wanted), "{err}");
        }
        let missing = PathBuf::from("/nonexistent/meet.toml");
        let given = vec![
            OsString::from("meet-server"),
            OsString::from("--config"),
            missing.into_os_string(),
        ];
        let err = merge_args(&command(), given).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/meet.toml"), "{err}");
    }

    #[test]
    fn help_is_answered_before_the_file_is_read() {
        let given = vec![
            OsString::from("meet-server"),
            OsString::from("--config"),
            OsString::from("/nonexistent/meet.toml"),
            OsString::from("--help"),
        ];
        match merge_args(&command(), given) {
            Err(MergeError::Cli(err)) => {
                assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp)
            }
            other => panic!("expected help, got {other:?}"),
        }
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("http_addr", "http_addr"), 0);
        assert_eq!(edit_distance("http_addr", "http_adr"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
