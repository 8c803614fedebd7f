//! 150,000 accounts imported from one CSV file through the API of the real server, then
//! listed by page, searched, activated and signed in. The import's time and the process's
//! peak memory over it, and sign-in times before and after, are printed (stderr), not
//! asserted: they depend on the machine.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{Value, json};
use signaling::store::{AccountRole, NewAccount};

const ACCOUNTS: usize = 150_000;
const PROVINCES: usize = 63;
const COMMUNES: usize = 3_321;
const PASSWORD: &str = "a long enough password";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the process's resident memory every 5 ms until dropped; keeps the highest.
struct PeakRss {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakRss {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib()));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed).max(rss_kib())
    }
}

/// The fastest and the median of `n` sign-ins of `username`, each on a fresh connection. The
/// fastest is the figure to compare: other work on the machine only ever adds to it.
async fn sign_in_time(t: &TestServer, username: &str, n: usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let (status, body) = t
            .api_json(
                "POST",
                "/api/login",
                None,
                Some(json!({"username": username, "password": PASSWORD, "remember": true})),
            )
            .await;
        times.push(started.elapsed());
        assert_eq!(status, 200, "{body}");
    }
    times.sort();
    (times[0], times[n / 2])
}

/// The fastest and the median of `n` authenticated reads of `/api/me` (a login checked by its hash).
async fn session_check_time(t: &TestServer, token: &str, n: usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let (status, body) = t.api_json("GET", "/api/me", Some(token), None).await;
        times.push(started.elapsed());
        assert_eq!(status, 200, "{body}");
    }
    times.sort();
    (times[0], times[n / 2])
}

/// Milliseconds of a pair of times, for printing: `fastest / median`.
fn ms((fastest, median): (Duration, Duration)) -> String {
    format!(
        "{:.1} / {:.1} ms",
        fastest.as_secs_f64() * 1000.0,
        median.as_secs_f64() * 1000.0
    )
}

fn usernames(page: &Value) -> Vec<&str> {
    page["accounts"]
        .as_array()
        .expect("accounts")
        .iter()
        .map(|a| a["username"].as_str().expect("a username"))
        .collect()
}

/// The commune an imported account belongs to, by its number.
fn commune_of(n: usize) -> usize {
    n % COMMUNES + 1
}

/// `server` (a `postgres://` URL) with its database name replaced by `name`.
fn postgres_database(server: &str, name: &str) -> String {
    let (base, query) = server.split_once('?').unwrap_or((server, ""));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    }
}

/// On SQLite, and on PostgreSQL too when `MEET_TEST_POSTGRES_URL` names a server (a fresh
/// database, dropped afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_150000_accounts_then_paging_searching_and_signing_in() {
    import_page_search_sign_in("SQLite", None).await;
    if let Ok(server) = std::env::var("MEET_TEST_POSTGRES_URL") {
        use sqlx::migrate::MigrateDatabase;
        sqlx::any::install_default_drivers();
        let url = postgres_database(
            &server,
            &format!("meet_import_{}", signaling::store::new_id()),
        );
        sqlx::Any::create_database(&url)
            .await
            .expect("a database can be created on MEET_TEST_POSTGRES_URL");
        import_page_search_sign_in("PostgreSQL", Some(url.clone())).await;
        let _ = sqlx::Any::force_drop_database(&url).await;
    }
}

async fn import_page_search_sign_in(backend: &str, database_url: Option<String>) {
    let t = common::start("import-150k", |c| c.database_url = database_url).await;
    t.server
        .store
        .create_account(&NewAccount {
            username: "admin",
            display_name: "Quản trị",
            password: PASSWORD,
            role: AccountRole::Admin,
        })
        .await
        .expect("admin");
    let (_, login) = t
        .api_json(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "admin", "password": PASSWORD})),
        )
        .await;
    let admin = login["token"].as_str().expect("a token").to_string();

    // The national directory: the central site, 63 provinces, 3,321 communes.
    let mut sites = String::from("code,name,kind,parent_code\nVN,Trung ương,central,\n");
    for p in 1..=PROVINCES {
        sites.push_str(&format!("P{p:02},Tỉnh số {p:02},province,VN\n"));
    }
    for c in 1..=COMMUNES {
        let p = (c - 1) % PROVINCES + 1;
        sites.push_str(&format!("C{c:04},Xã số {c:04},commune,P{p:02}\n"));
    }
    let response = t
        .api(
            "POST",
            "/api/sites/import",
            Some(&admin),
            "text/csv",
            sites.as_bytes(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.body);

    let before_import = sign_in_time(&t, "admin", 9).await;
    let before_check = session_check_time(&t, &admin, 21).await;

    // Officials and meeting rooms of every commune.
    let mut csv = String::with_capacity(ACCOUNTS * 56);
    csv.push_str("username,display_name,role,site_code\n");
    for n in 0..ACCOUNTS {
        let role = if n % 3 == 0 {
            "site_operator"
        } else {
            "official"
        };
        csv.push_str(&format!(
            "site{n:06},Cán bộ {n:06},{role},C{:04}\n",
            commune_of(n)
        ));
    }

    let rss_before = rss_kib();
    let peak = PeakRss::start();
    let started = Instant::now();
    let response = t
        .api(
            "POST",
            "/api/accounts/import",
            Some(&admin),
            "text/csv",
            csv.as_bytes(),
        )
        .await;
    let took = started.elapsed();
    let peak_kib = peak.finish();
    assert_eq!(
        response.status,
        200,
        "{}",
        &response.body[..response.body.len().min(2000)]
    );
    eprintln!(
        "{backend}: imported {ACCOUNTS} accounts ({:.1} MiB of CSV in, {:.1} MiB of links out) in {:.2} s; \
         peak RSS +{:.1} MiB over the {:.1} MiB before (the test process: server and client, \
         whose copies of the file and of the answer count too)",
        csv.len() as f64 / 1_048_576.0,
        response.body.len() as f64 / 1_048_576.0,
        took.as_secs_f64(),
        peak_kib.saturating_sub(rss_before) as f64 / 1024.0,
        rss_before as f64 / 1024.0,
    );
    assert_eq!(
        TestServer::header(&response, "content-type"),
        Some("text/csv; charset=utf-8")
    );

    // One line per account, in the file's order, each with its own link.
    let mut reader = csv::Reader::from_reader(response.body.as_bytes());
    assert_eq!(
        reader.headers().expect("a header"),
        vec![
            "username",
            "display_name",
            "role",
            "site_code",
            "activation_link"
        ]
    );
    let mut links = std::collections::HashSet::with_capacity(ACCOUNTS);
    let mut link_of_42 = None;
    let mut count = 0;
    for (n, row) in reader.records().enumerate() {
        let row = row.expect("a row");
        assert_eq!(&row[0], format!("site{n:06}"));
        assert_eq!(&row[3], format!("C{:04}", commune_of(n)));
        let token = row[4]
            .strip_prefix("/organizer.html#activate=")
            .expect("an activation link");
        assert_eq!(token.len(), 64);
        assert!(links.insert(token.to_string()), "every link is its own");
        if n == 42 {
            link_of_42 = Some(token.to_string());
        }
        count += 1;
    }
    assert_eq!(count, ACCOUNTS);
    drop(links);

    // Pages of 500 by username, the administrator first.
    let list = |query: String| {
        let t = &t;
        let admin = admin.clone();
        async move {
            let (status, body) = t
                .api_json("GET", &format!("/api/accounts{query}"), Some(&admin), None)
                .await;
            assert_eq!(status, 200, "{query}: {body}");
            body
        }
    };
    let total = ACCOUNTS + 1;
    let first = list("?per_page=500".into()).await;
    assert_eq!(first["total"], total);
    let names = usernames(&first);
    assert_eq!(names.len(), 500);
    assert_eq!(names[0], "admin");
    assert_eq!(names[1], "site000000");
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted");
    let second = list("?per_page=500&page=2".into()).await;
    assert_eq!(
        usernames(&second)[0],
        "site000499",
        "pages follow each other"
    );
    let last = list(format!("?per_page=500&page={}", total.div_ceil(500))).await;
    assert_eq!(usernames(&last), ["site149999"]);
    let beyond = list(format!("?per_page=500&page={}", total.div_ceil(500) + 1)).await;
    assert!(usernames(&beyond).is_empty());

    // Search by username, display name and site name; filters by role and site.
    let found = list("?q=site123456".into()).await;
    assert_eq!(usernames(&found), ["site123456"]);
    let found = list("?q=C%C3%A1n%20b%E1%BB%99%20100000".into()).await;
    assert_eq!(usernames(&found), ["site100000"]);
    let at_commune = (0..ACCOUNTS).filter(|n| commune_of(*n) == 42).count();
    let found = list("?q=X%C3%A3%20s%E1%BB%91%200042&per_page=500".into()).await;
    assert_eq!(found["total"], at_commune, "every account of Xã số 0042");
    assert!(
        found["accounts"]
            .as_array()
            .expect("accounts")
            .iter()
            .all(|a| a["site_code"] == "C0042" && a["pending_activation"] == true)
    );
    let operators = list("?role=site_operator&per_page=1".into()).await;
    assert_eq!(operators["total"], ACCOUNTS.div_ceil(3));
    let site_id = found["accounts"][0]["site_id"]
        .as_str()
        .expect("a site")
        .to_string();
    let officials_there = list(format!("?role=official&site_id={site_id}")).await;
    assert_eq!(
        officials_there["total"],
        (0..ACCOUNTS)
            .filter(|n| commune_of(*n) == 42 && n % 3 != 0)
            .count()
    );

    // One account activates with its link and signs in; sign-in costs what it cost before.
    let (status, activated) = t
        .api_json(
            "POST",
            "/api/activate",
            None,
            Some(json!({"token": link_of_42.expect("line 42"), "password": PASSWORD, "remember": true})),
        )
        .await;
    assert_eq!(status, 200, "{activated}");
    assert_eq!(activated["account"]["username"], "site000042");
    let after_import = sign_in_time(&t, "admin", 9).await;
    let site_sign_in = sign_in_time(&t, "site000042", 9).await;
    let token = activated["token"].as_str().expect("a token");
    let after_check = session_check_time(&t, token, 21).await;
    eprintln!(
        "{backend}: sign-in (fastest / median of 9, HTTPS on loopback, one argon2id check each): {} with \
         1 account; {} with {total} (the administrator), {} (an imported account); a signed-in \
         request (fastest / median of 21): {} before, {} after",
        ms(before_import),
        ms(after_import),
        ms(site_sign_in),
        ms(before_check),
        ms(after_check),
    );
    let common::TestServer { server, data_dir } = t;
    server.shutdown().await;
    drop(data_dir);
}
