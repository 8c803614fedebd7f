//! The binary's configuration as an operator sets it: a TOML file (`--config`, `MEET_CONFIG`)
//! under the environment and the command line, typo safety for its keys, JSON logs, and the
//! warning for a web client directory that holds no web client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to log that it is listening: generous, for a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "meet-config-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    /// Writes `text` to `name` in this directory; its path.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary, with no `MEET_…` variable from the test's own environment, logging at `info`
/// without colors, in `cwd`.
fn meet_server(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meet-server"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MEET_") {
            command.env_remove(name);
        }
    }
    command
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// A TOML string literal for `path`.
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// A running server whose standard output is read line by line; killed on drop.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("meet-server starts");
        let (send, lines) = mpsc::channel();
        let outputs: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout piped")),
            Box::new(child.stderr.take().expect("stderr piped")),
        ];
        for output in outputs {
            let send = send.clone();
            // Read to the end, so that the server never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines() {
                    let Ok(line) = line else { break };
                    let _ = send.send(line);
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (since the start) for which `wanted` holds; panics, showing the log,
    /// if none comes before the deadline or the server exits.
    fn wait_for(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|line| wanted(line)) {
            return line.clone();
        }
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line {what} (exit: {:?}); the log:\n{}",
                    self.child.try_wait(),
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn an_unknown_key_in_the_file_is_an_error_naming_it() {
    let dir = TempDir::new("unknown");
    let config = dir.file(
        "meet.toml",
        &format!(
            "data_dir = {}\nhttp_adr = \"127.0.0.1:0\"\n",
            toml_path(&dir.0.join("data"))
        ),
    );
    // Through the flag and through the environment alike.
    let by_flag = meet_server(&dir.0)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("runs");
    let by_env = meet_server(&dir.0)
        .env("MEET_CONFIG", &config)
        .output()
        .expect("runs");
    for output in [by_flag, by_env] {
        let log = text(&output);
        assert!(!output.status.success(), "{log}");
        assert!(log.contains("unknown key `http_adr`"), "{log}");
        assert!(log.contains("did you mean `http_addr`"), "{log}");
        assert!(log.contains(&config.display().to_string()), "{log}");
    }
    // It stopped before touching anything.
    assert!(!dir.0.join("data").exists());
}

#[test]
fn a_bad_value_in_the_file_is_an_error_naming_the_file() {
    let dir = TempDir::new("bad-value");
    let config = dir.file("meet.toml", "log_format = \"xml\"\n");
    let output = meet_server(&dir.0)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("runs");
    let log = text(&output);
    assert!(!output.status.success(), "{log}");
    assert!(log.contains("xml"), "{log}");
    assert!(log.contains("log_format"), "{log}");
    assert!(log.contains(&config.display().to_string()), "{log}");

    let missing = dir.0.join("missing.toml");
    let output = meet_server(&dir.0)
        .arg("--config")
        .arg(&missing)
        .output()
        .expect("runs");
    let log = text(&output);
    assert!(!output.status.success(), "{log}");
    assert!(log.contains(&missing.display().to_string()), "{log}");
}

/// `admin create` with `config` and the `env` given, and `--data-dir flag` if any; the
/// directory (under `dir`) that got the database, which it then removes.
fn admin_create(
    dir: &TempDir,
    config: &Path,
    env: &[(&str, &Path)],
    flag: Option<&Path>,
) -> PathBuf {
    let mut command = meet_server(&dir.0);
    command
        .args(["admin", "create", "--username", "admin"])
        .args(["--display-name", "Admin", "--password-env", "MEET_TEST_PW"])
        .env("MEET_TEST_PW", "correct horse battery staple 42")
        .env("MEET_CONFIG", config);
    for (name, value) in env {
        command.env(name, value);
    }
    if let Some(data_dir) = flag {
        command.arg("--data-dir").arg(data_dir);
    }
    let output = command.output().expect("runs");
    assert!(output.status.success(), "{}", text(&output));
    let created: Vec<PathBuf> = ["file", "env", "flag", "data"]
        .iter()
        .map(|name| dir.0.join(name))
        .filter(|path| path.join("meet.db").exists())
        .collect();
    assert_eq!(created.len(), 1, "one database: {created:?}");
    let found = created[0].clone();
    std::fs::remove_dir_all(&found).expect("cleared");
    found
}

#[test]
fn the_command_line_wins_over_the_environment_which_wins_over_the_file() {
    let dir = TempDir::new("precedence");
    let (file, env, flag) = (dir.0.join("file"), dir.0.join("env"), dir.0.join("flag"));
    let config = dir.file(
        "meet.toml",
        &format!("data_dir = {}\nlog_format = \"text\"\n", toml_path(&file)),
    );
    assert_eq!(admin_create(&dir, &config, &[], None), file);
    assert_eq!(
        admin_create(&dir, &config, &[("MEET_DATA_DIR", &env)], None),
        env
    );
    assert_eq!(
        admin_create(&dir, &config, &[("MEET_DATA_DIR", &env)], Some(&flag)),
        flag
    );
    assert_eq!(admin_create(&dir, &config, &[], Some(&flag)), flag);
}

/// A configuration file for a server on `ip` with free ports, its state in `dir`.
fn server_config(dir: &TempDir, ip: &str, extra: &str) -> PathBuf {
    dir.file(
        "meet.toml",
        &format!(
            "# The test's server.\nhttp_addr = \"{ip}:0\"\nmedia_addr = \"{ip}:0\"\n\
             data_dir = {}\nmedia_workers = 1\nmax_participants_per_room = 10\n{extra}",
            toml_path(&dir.0.join("data"))
        ),
    )
}

#[test]
fn the_server_listens_where_the_file_says_unless_a_flag_overrides_it() {
    let dir = TempDir::new("listen");
    let config = server_config(&dir, "127.0.0.2", "");
    let mut from_file = Server::spawn({
        let mut command = meet_server(&dir.0);
        command.arg("--config").arg(&config);
        command
    });
    from_file.wait_for("listening on 127.0.0.2", |line| {
        line.contains("open https://127.0.0.2:")
    });
    // The default web client directory, `web-client` in the working directory, is missing
    // here: the log says so, and which option to set.
    let warning = from_file.wait_for("warning about the web client", |line| {
        line.contains("WARN") && line.contains("--web-client-dir")
    });
    let real = dir.0.canonicalize().expect("temp dir");
    assert!(
        [&dir.0, &real]
            .iter()
            .any(|cwd| warning.contains(&cwd.join("web-client").display().to_string())),
        "{warning}"
    );
    drop(from_file);

    let mut from_flag = Server::spawn({
        let mut command = meet_server(&dir.0);
        command
            .arg("--config")
            .arg(&config)
            .args(["--http-addr", "127.0.0.3:0"]);
        command
    });
    let line = from_flag.wait_for("listening on 127.0.0.3", |line| {
        line.contains("open https://")
    });
    assert!(line.contains("open https://127.0.0.3:"), "{line}");
    // The file's media address still applies.
    assert!(line.contains("media on udp 127.0.0.2:"), "{line}");
}

#[test]
fn json_logs_are_one_object_a_line() {
    let dir = TempDir::new("json");
    let web_client = concat!(env!("CARGO_MANIFEST_DIR"), "/../web-client");
    let config = server_config(
        &dir,
        "127.0.0.1",
        &format!(
            "log_format = \"text\"\nweb_client_dir = {}\n",
            toml_path(Path::new(web_client))
        ),
    );
    // The flag wins over the file's `text`.
    let mut server = Server::spawn({
        let mut command = meet_server(&dir.0);
        command
            .arg("--config")
            .arg(&config)
            .args(["--log-format", "json"]);
        command
    });
    let line = server.wait_for("saying where it listens", |line| {
        line.contains("open https://")
    });
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(event["level"], "INFO", "{line}");
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|message| message.starts_with("open https://127.0.0.1:")),
        "{line}"
    );
    assert!(event["timestamp"].is_string(), "{line}");
    assert!(event["target"].is_string(), "{line}");
    // Every line so far is an object, the start event's fields at its top level.
    let started = server.wait_for("for the start", |line| line.contains("server started"));
    let started: serde_json::Value = serde_json::from_str(&started).expect("a JSON line");
    assert!(started["http_addr"].is_string(), "{started}");
    for line in &server.seen {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(parsed.is_object(), "{line}");
        // The web client is where the file says: no warning.
        assert!(!line.contains("--web-client-dir"), "{line}");
    }
}

#[test]
fn the_web_client_warning_names_the_directory_and_the_option() {
    let dir = TempDir::new("web-client");
    let problem = signaling::web_client_dir_problem(&dir.0).expect("no index.html");
    assert!(problem.contains(&dir.0.display().to_string()), "{problem}");
    assert!(problem.contains("--web-client-dir"), "{problem}");
    let web_client = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../web-client"));
    assert_eq!(signaling::web_client_dir_problem(web_client), None);
    // The library's default is relative to the working directory, not the build tree.
    assert_eq!(
        signaling::Config::new().web_client_dir,
        PathBuf::from("web-client")
    );
}

/// The long options `meet-server --help` lists, as configuration keys.
fn option_keys() -> Vec<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_meet-server"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", text(&output));
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut keys: Vec<String> = help
        .lines()
        .filter_map(|line| {
            let option = line.split_whitespace().next()?;
            let option = option.trim_end_matches(',');
            let long = option.strip_prefix("--")?;
            Some(long.replace('-', "_"))
        })
        .filter(|key| !matches!(key.as_str(), "config" | "help" | "version"))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[test]
fn the_example_file_lists_every_option_and_its_active_values_parse() {
    let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/meet.toml"));
    let text_of_example = std::fs::read_to_string(example).expect("deploy/meet.toml");
    // Every option, commented out (`# key = default`) or set (the line after the default).
    let mut table = toml::Table::new();
    for line in text_of_example.lines() {
        let bare = line.strip_prefix("# ").unwrap_or(line);
        let Some((key, _)) = bare.split_once(" = ") else {
            continue;
        };
        if !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            continue;
        }
        let setting: toml::Table = toml::from_str(bare)
            .unwrap_or_else(|e| panic!("deploy/meet.toml: `{bare}` is not TOML: {e}"));
        table.extend(setting);
    }
    let mut listed: Vec<String> = table.keys().cloned().collect();
    listed.sort();
    assert_eq!(listed, option_keys(), "deploy/meet.toml against --help");

    // The lines it sets are accepted as they are: `admin create` reads them all (its storage
    // moved to a temporary directory by the command line, which wins over the file).
    let dir = TempDir::new("example");
    let output = meet_server(&dir.0)
        .arg("--config")
        .arg(example)
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .args(["admin", "create", "--username", "admin"])
        .args(["--display-name", "Admin", "--password-env", "MEET_TEST_PW"])
        .env("MEET_TEST_PW", "correct horse battery staple 42")
        .output()
        .expect("runs");
    assert!(output.status.success(), "{}", text(&output));
    assert!(dir.0.join("data/meet.db").exists());
}
