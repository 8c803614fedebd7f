//! Sites and officials sign in and join their meetings with one click; links are exported as
//! CSV; attendance is counted per province. All on the real server over loopback: HTTPS calls
//! to the API, WebSocket joins with the tokens it signs, and str0m bots.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{RawClient, Received, TestServer};
use loadtest::bot::Bot;
use protocol::{Role, ServerMessage};
use serde_json::{Value, json};
use signaling::store::{AccountRole, NewAccount, unix_ms};

const PASSWORD: &str = "a long enough password";
/// Limit for storage to catch up with the room (the hub's journal writes within moments).
const CATCH_UP: Duration = Duration::from_secs(10);

/// An RFC 3339 time `offset_ms` from now, as a client sends it.
fn at(offset_ms: i64) -> String {
    signaling::rfc3339::format(unix_ms() + offset_ms).expect("in range")
}

/// A new account of `role`, made in storage, and a bearer token for it from the API.
async fn signed_in(t: &TestServer, username: &str, role: AccountRole) -> String {
    t.server
        .store
        .create_account(&NewAccount {
            username,
            display_name: &format!("{username} display"),
            password: PASSWORD,
            role,
        })
        .await
        .expect("account");
    token_of_login(&log_in(t, username, false).await)
}

/// Signs in with [`PASSWORD`], remembering the device or not; the login.
async fn log_in(t: &TestServer, username: &str, remember: bool) -> Value {
    let (status, login) = t
        .api_json(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": username, "password": PASSWORD, "remember": remember})),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    login
}

fn token_of_login(login: &Value) -> String {
    login["token"].as_str().expect("a token").to_string()
}

/// Checks that a login lasts the 30 days of a remembered device.
fn assert_remembered(login: &Value) {
    let expires =
        signaling::rfc3339::parse(login["expires_at"].as_str().expect("a time")).expect("RFC 3339");
    assert!(expires > unix_ms() + 29 * 24 * 3600 * 1000, "{login}");
}

/// An administrator ("root") and an organizer ("lan") signed in, and the directory imported
/// from `sites` lines (see [`directory`]): the tokens and the directory.
async fn staff_and_directory(
    t: &TestServer,
    sites: &[&str],
) -> (String, String, HashMap<String, String>) {
    let admin = signed_in(t, "root", AccountRole::Admin).await;
    let organizer = signed_in(t, "lan", AccountRole::Organizer).await;
    let sites = directory(t, &admin, sites).await;
    (admin, organizer, sites)
}

/// Imports sites (`code,name,kind,parent_code` lines, without the header); returns the
/// directory as `code → id`.
async fn directory(t: &TestServer, admin: &str, lines: &[&str]) -> HashMap<String, String> {
    let csv = format!("code,name,kind,parent_code\n{}\n", lines.join("\n"));
    let response = t
        .api(
            "POST",
            "/api/sites/import",
            Some(admin),
            "text/csv",
            csv.as_bytes(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let (_, sites) = t.api_json("GET", "/api/sites", Some(admin), None).await;
    sites
        .as_array()
        .expect("sites")
        .iter()
        .map(|s| {
            (
                s["code"].as_str().expect("code").to_string(),
                s["id"].as_str().expect("id").to_string(),
            )
        })
        .collect()
}

/// Schedules a meeting; returns its detail.
async fn schedule(
    t: &TestServer,
    organizer: &str,
    title: &str,
    starts_at: Value,
    ends_at: Value,
    invitations: Value,
) -> Value {
    let (status, meeting) = t
        .api_json(
            "POST",
            "/api/meetings",
            Some(organizer),
            Some(json!({
                "title": title,
                "starts_at": starts_at,
                "ends_at": ends_at,
                "admission": "scheduled",
                "invitations": invitations,
            })),
        )
        .await;
    assert_eq!(status, 201, "{meeting}");
    meeting
}

/// The token of a `/#join=<token>` path or link.
fn token_of(link: &str) -> &str {
    link.split_once("#join=").expect("a join link").1
}

/// Joins with a token over a raw WebSocket; returns the client and its `joined` message.
async fn join(t: &TestServer, token: &str) -> (RawClient, ServerMessage) {
    let mut client = t.raw().await;
    let answer = client.join_token(token).await;
    assert!(
        matches!(answer, ServerMessage::Joined { .. }),
        "expected joined, got {answer:?}"
    );
    (client, answer)
}

/// The meeting ids of one group of `GET /api/my/meetings`.
fn ids(mine: &Value, group: &str) -> Vec<String> {
    mine[group]
        .as_array()
        .unwrap_or_else(|| panic!("{group} in {mine}"))
        .iter()
        .map(|m| m["meeting_id"].as_str().expect("an id").to_string())
        .collect()
}

fn meeting_id(meeting: &Value) -> String {
    meeting["id"].as_str().expect("an id").to_string()
}

/// The invitation of `meeting` (as its detail shows it) for the site `site_id`.
fn invitation_of<'a>(meeting: &'a Value, site_id: &str) -> &'a Value {
    meeting["invitations"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["site_id"] == site_id))
        .unwrap_or_else(|| panic!("no invitation of {site_id}: {meeting}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_account_activates_signs_in_sees_its_meeting_and_joins_with_one_click() {
    let t = common::start("site-join", |_| {}).await;
    let (admin, organizer, sites) = staff_and_directory(
        &t,
        &[
            "VN,Trung ương,central,",
            "P1,Tỉnh Một,province,VN",
            "P2,Tỉnh Hai,province,VN",
            "C1,Xã Một,commune,P1",
            "C2,Xã Hai,commune,P2",
        ],
    )
    .await;

    // The administrator creates the commune's meeting room without a password; the room
    // activates its account with the link, remembering the device.
    let (status, created) = t
        .api_json(
            "POST",
            "/api/accounts",
            Some(&admin),
            Some(
                json!({"username": "c1.room", "display_name": "Phòng họp xã Một",
                "role": "site_operator", "site_id": sites["C1"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let link = created["activation"]["activation_link"]
        .as_str()
        .expect("an activation link");
    let activation = link.split_once("#activate=").expect("a token").1;
    let (status, login) = t
        .api_json(
            "POST",
            "/api/activate",
            None,
            Some(json!({"token": activation, "password": PASSWORD, "remember": true})),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    assert_remembered(&login);
    // Signing in again with "remember" gives another 30-day login.
    let login = log_in(&t, "c1.room", true).await;
    assert_remembered(&login);
    let room = token_of_login(&login);
    assert_eq!(login["account"]["site_code"], "C1");

    // An official of another province.
    let (status, _) = t
        .api_json(
            "POST",
            "/api/accounts",
            Some(&admin),
            Some(json!({"username": "p2.official", "display_name": "Ông Hai",
                "role": "official", "site_id": sites["P2"], "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 201);
    let stranger = token_of_login(&log_in(&t, "p2.official", false).await);

    // Now, tomorrow, cancelled and over: times in RFC 3339 and in milliseconds alike.
    let c1 = |role: &str| json!([{"role": role, "site_id": sites["C1"]}]);
    let now = schedule(
        &t,
        &organizer,
        "Giao ban",
        json!(at(-60_000)),
        json!(at(3_600_000)),
        c1("participant"),
    )
    .await;
    let tomorrow = schedule(
        &t,
        &organizer,
        "Ngày mai",
        json!(unix_ms() + 86_400_000),
        json!(unix_ms() + 90_000_000),
        c1("viewer"),
    )
    .await;
    let cancelled = schedule(
        &t,
        &organizer,
        "Hoãn",
        json!(at(3_600_000)),
        json!(at(7_200_000)),
        c1("participant"),
    )
    .await;
    let over = schedule(
        &t,
        &organizer,
        "Hôm qua",
        json!(at(-86_400_000)),
        json!(at(-82_800_000)),
        c1("participant"),
    )
    .await;
    let (status, _) = t
        .api_json(
            "POST",
            &format!("/api/meetings/{}/cancel", meeting_id(&cancelled)),
            Some(&organizer),
            None,
        )
        .await;
    assert_eq!(status, 200);

    let (status, mine) = t
        .api_json("GET", "/api/my/meetings", Some(&room), None)
        .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(ids(&mine, "now"), [meeting_id(&now)], "{mine}");
    assert_eq!(ids(&mine, "upcoming"), [meeting_id(&tomorrow)], "{mine}");
    assert_eq!(ids(&mine, "past"), [meeting_id(&over)], "{mine}");
    let item = &mine["now"][0];
    assert_eq!(item["title"], "Giao ban");
    assert_eq!(item["role"], "participant");
    assert_eq!(item["e2ee"], false);
    assert_eq!(item["status"], "scheduled");
    assert_eq!(item["starts_at"], now["starts_at"]);
    assert!(item["ends_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(mine["upcoming"][0]["role"], "viewer");

    // The official of another site sees none of it and cannot join.
    let (status, theirs) = t
        .api_json("GET", "/api/my/meetings", Some(&stranger), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(theirs, json!({"now": [], "upcoming": [], "past": []}));
    let join_uri = format!("/api/my/meetings/{}/join", meeting_id(&now));
    let (status, body) = t.api_json("POST", &join_uri, Some(&stranger), None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, _) = t.api_json("POST", &join_uri, None, None).await;
    assert_eq!(status, 401);

    // The organizer finds the meeting among its own and joins as host with one click; then
    // the room joins with one click and the host sees it arrive.
    let (_, theirs) = t
        .api_json("GET", "/api/my/meetings", Some(&organizer), None)
        .await;
    assert_eq!(theirs["now"][0]["meeting_id"], now["id"], "{theirs}");
    assert_eq!(theirs["now"][0]["role"], "host");
    let (status, body) = t.api_json("POST", &join_uri, Some(&organizer), None).await;
    assert_eq!(status, 200, "{body}");
    let (mut host, joined) = join(&t, token_of(body["join_path"].as_str().expect("a path"))).await;
    let ServerMessage::Joined { role, .. } = joined else {
        unreachable!("join returns joined")
    };
    assert_eq!(role, Role::Host);

    let (status, body) = t.api_json("POST", &join_uri, Some(&room), None).await;
    assert_eq!(status, 200, "{body}");
    let join_path = body["join_path"].as_str().expect("a join path");
    assert!(join_path.starts_with("/#join="), "{join_path}");
    let (mut site, joined) = join(&t, token_of(join_path)).await;
    let ServerMessage::Joined {
        room: joined_room,
        role,
        title,
        ..
    } = joined
    else {
        unreachable!("join returns joined")
    };
    assert_eq!(joined_room.0, meeting_id(&now));
    assert_eq!(role, Role::Participant);
    assert_eq!(title, "Giao ban");
    loop {
        match host.next().await {
            Received::Message(ServerMessage::ParticipantJoined { participant }) => {
                assert_eq!(participant.name, "Xã Một");
                assert_eq!(participant.site.as_deref(), Some("Xã Một"));
                assert_eq!(participant.role, Role::Participant);
                break;
            }
            Received::Message(_) => {}
            Received::Closed(code) => panic!("the host was disconnected ({code:?})"),
        }
    }

    // The organizer revokes the commune's invitation: the room is removed, the meeting
    // leaves its list and its one click is refused.
    let (_, detail) = t
        .api_json(
            "GET",
            &format!("/api/meetings/{}", meeting_id(&now)),
            Some(&organizer),
            None,
        )
        .await;
    let invitation = invitation_of(&detail, &sites["C1"])["id"]
        .as_str()
        .expect("the commune's invitation")
        .to_string();
    let (status, _) = t
        .api_json(
            "DELETE",
            &format!(
                "/api/meetings/{}/invitations/{invitation}",
                meeting_id(&now)
            ),
            Some(&organizer),
            None,
        )
        .await;
    assert_eq!(status, 204);
    loop {
        match site.next().await {
            Received::Closed(_) => break,
            Received::Message(ServerMessage::Error { .. }) => {}
            Received::Message(_) => {}
        }
    }
    let (_, mine) = t
        .api_json("GET", "/api/my/meetings", Some(&room), None)
        .await;
    assert!(ids(&mine, "now").is_empty(), "{mine}");
    assert_eq!(ids(&mine, "upcoming"), [meeting_id(&tomorrow)], "{mine}");
    let (status, body) = t.api_json("POST", &join_uri, Some(&room), None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    // The token it was given before the revocation no longer joins either.
    let mut again = t.raw().await;
    let answer = again.join_token(token_of(join_path)).await;
    assert!(
        matches!(answer, ServerMessage::Error { .. }),
        "a revoked invitation's token joined: {answer:?}"
    );
    for meeting in [&tomorrow, &cancelled, &over] {
        let uri = format!("/api/my/meetings/{}/join", meeting_id(meeting));
        let (status, _) = t.api_json("POST", &uri, Some(&room), None).await;
        let expected = if meeting_id(meeting) == meeting_id(&tomorrow) {
            200
        } else if meeting_id(meeting) == meeting_id(&cancelled) {
            404
        } else {
            409
        };
        assert_eq!(status, expected, "{}", meeting["title"]);
    }
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_links_csv_has_one_working_link_per_invitation() {
    let t = common::start("links-csv", |_| {}).await;
    let (_, organizer, sites) = staff_and_directory(
        &t,
        &[
            "VN,Trung ương,central,",
            "P1,Tỉnh Một,province,VN",
            "C1,Xã Một,commune,P1",
            "C2,Xã Hai,commune,P1",
        ],
    )
    .await;
    let other = signed_in(&t, "minh", AccountRole::Organizer).await;
    let meeting = schedule(
        &t,
        &organizer,
        "Hội nghị",
        json!(at(-60_000)),
        json!(at(3_600_000)),
        json!([
            {"role": "presenter", "site_id": sites["P1"]},
            {"role": "participant", "site_id": sites["C1"]},
            {"role": "participant", "site_id": sites["C2"]},
            {"role": "viewer", "name": "=Ông Tư"},
        ]),
    )
    .await;
    let id = meeting_id(&meeting);
    let revoked = invitation_of(&meeting, &sites["C2"])["id"]
        .as_str()
        .expect("C2's invitation")
        .to_string();
    let (status, _) = t
        .api_json(
            "DELETE",
            &format!("/api/meetings/{id}/invitations/{revoked}"),
            Some(&organizer),
            None,
        )
        .await;
    assert_eq!(status, 204);

    let uri = format!("/api/meetings/{id}/invitations.csv");
    let response = t
        .api("GET", &uri, Some(&organizer), "text/plain", b"")
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        TestServer::header(&response, "content-type"),
        Some("text/csv; charset=utf-8")
    );
    let mut reader = csv::Reader::from_reader(response.body.as_bytes());
    assert_eq!(
        reader.headers().expect("a header"),
        vec!["code", "name", "role", "link"]
    );
    let rows: Vec<csv::StringRecord> = reader
        .records()
        .collect::<Result<_, _>>()
        .expect("CSV rows");
    let standing: HashSet<String> = meeting["invitations"]
        .as_array()
        .expect("invitations")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .filter(|i| *i != revoked)
        .map(str::to_string)
        .collect();
    assert_eq!(rows.len(), standing.len(), "{}", response.body);
    let mut seen = HashSet::new();
    for row in &rows {
        let (code, name, role, link) = (&row[0], &row[1], &row[2], &row[3]);
        assert!(
            link.starts_with("https://localhost/#join="),
            "absolute, from the request's host: {link}"
        );
        let claims = t.server.tokens.verify(token_of(link)).expect("verifies");
        assert_eq!(claims.room, id);
        assert_eq!(claims.role.as_str(), role);
        assert!(standing.contains(&claims.sub), "{row:?}");
        assert!(seen.insert(claims.sub.clone()), "one row per invitation");
        match code {
            "" => assert!(
                name == "'=Ông Tư" || name == "lan display",
                "a person, defused for spreadsheets: {name}"
            ),
            "P1" => assert_eq!((name, role), ("Tỉnh Một", "presenter")),
            "C1" => assert_eq!((name, role), ("Xã Một", "participant")),
            other => panic!("unexpected code {other}"),
        }
    }
    // Every link joins the room as its invitation.
    let mut clients = Vec::new();
    for row in &rows {
        let (client, joined) = join(&t, token_of(&row[3])).await;
        let ServerMessage::Joined { role, .. } = joined else {
            unreachable!("join returns joined")
        };
        assert_eq!(role.as_str(), &row[2]);
        clients.push(client);
    }

    let (status, _) = t.api_json("GET", &uri, Some(&other), None).await;
    assert_eq!(status, 404, "another organizer's meeting is not found");
    let (status, _) = t.api_json("GET", &uri, None, None).await;
    assert_eq!(status, 401);
    let (status, _) = t
        .api_json(
            "POST",
            &format!("/api/meetings/{id}/cancel"),
            Some(&organizer),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = t.api_json("GET", &uri, Some(&organizer), None).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
}

/// The attendance report until `done` holds for it, polled: the hub's journal writes arrivals
/// and departures within moments.
async fn attendance_until(
    t: &TestServer,
    token: &str,
    meeting: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let (status, report) = t
            .api_json(
                "GET",
                &format!("/api/meetings/{meeting}/attendance"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{report}");
        if done(&report) {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}: {report:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(code, invited, present, absent, missing codes)` of each province group, in order.
fn province_counts(report: &Value) -> Vec<(String, u64, u64, u64, Vec<String>)> {
    report["provinces"]
        .as_array()
        .expect("provinces")
        .iter()
        .map(|p| {
            (
                p["code"].as_str().unwrap_or("-").to_string(),
                p["invited"].as_u64().unwrap_or(0),
                p["present"].as_u64().unwrap_or(0),
                p["absent"].as_u64().unwrap_or(0),
                p["missing"]
                    .as_array()
                    .expect("missing")
                    .iter()
                    .map(|m| m["code"].as_str().expect("a code").to_string())
                    .collect(),
            )
        })
        .collect()
}

fn strings(codes: &[&str]) -> Vec<String> {
    codes.iter().map(|c| c.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attendance_counts_present_and_missing_sites_per_province() {
    let t = common::start("province-attendance", |c| {
        // The raw clients do not answer pings while the test looks elsewhere.
        c.session_limits.heartbeat_timeout = Duration::from_secs(120);
    })
    .await;
    let (_, organizer, sites) = staff_and_directory(
        &t,
        &[
            "VN,Trung ương,central,",
            "P1,Tỉnh Một,province,VN",
            "P2,Tỉnh Hai,province,VN",
            "P3,Tỉnh Ba,province,VN",
            "A1,Xã A1,commune,P1",
            "A2,Xã A2,commune,P1",
            "A3,Xã A3,commune,P1",
            "B1,Xã B1,commune,P2",
            "B2,Xã B2,commune,P2",
            "B3,Xã B3,commune,P2",
            "D1,Xã D1,commune,P3",
            "D2,Xã D2,commune,P3",
            "D3,Xã D3,commune,P3",
        ],
    )
    .await;
    let invited = [
        "VN", "P1", "A1", "A2", "A3", "B1", "B2", "B3", "D1", "D2", "D3",
    ];
    let invitations: Vec<Value> = invited
        .iter()
        .map(|code| json!({"role": "participant", "site_id": sites[*code]}))
        .collect();
    let meeting = schedule(
        &t,
        &organizer,
        "Giao ban toàn quốc",
        json!(at(-60_000)),
        json!(at(3_600_000)),
        json!(invitations),
    )
    .await;
    let id = meeting_id(&meeting);
    let link_of = |code: &str| -> String {
        invitation_of(&meeting, &sites[code])["join_path"]
            .as_str()
            .map(|path| token_of(path).to_string())
            .unwrap_or_else(|| panic!("{code}'s link"))
    };

    // Nobody yet: every province misses everything, the largest first.
    let report = attendance_until(&t, &organizer, &id, "the report answers", |_| true).await;
    assert_eq!(
        province_counts(&report),
        [
            ("P1".into(), 4, 0, 4, strings(&["A1", "A2", "A3", "P1"])),
            ("P2".into(), 3, 0, 3, strings(&["B1", "B2", "B3"])),
            ("P3".into(), 3, 0, 3, strings(&["D1", "D2", "D3"])),
            ("VN".into(), 1, 0, 1, strings(&["VN"])),
        ]
    );

    // Bots with media from two provinces, signaling-only clients for two more sites.
    let mut bots = Vec::new();
    for (code, tone, tag) in [("A1", 440.0, 0xA1), ("B1", 660.0, 0xB1)] {
        let mut options = t.bot_options("", code, tone, tag);
        options.token = Some(link_of(code));
        bots.push(Bot::connect(options).await.expect("bot joins"));
    }
    let mut raw = Vec::new();
    for code in ["P1", "A2"] {
        raw.push(join(&t, &link_of(code)).await.0);
    }
    let expected = [
        ("P3".to_string(), 3, 0, 3, strings(&["D1", "D2", "D3"])),
        ("P2".to_string(), 3, 1, 2, strings(&["B2", "B3"])),
        ("P1".to_string(), 4, 3, 1, strings(&["A3"])),
        ("VN".to_string(), 1, 0, 1, strings(&["VN"])),
    ];
    let report = attendance_until(&t, &organizer, &id, "four sites are present", |r| {
        province_counts(r) == expected
    })
    .await;
    let sites_of = report["sites"].as_array().expect("sites");
    let a1 = sites_of
        .iter()
        .find(|s| s["code"] == "A1")
        .expect("A1 is listed");
    assert_eq!(a1["province_code"], "P1");
    assert_eq!(a1["present"], true);

    // A bot leaves: its commune is missing again.
    let a1_bot = bots.remove(0);
    a1_bot.leave().await;
    attendance_until(&t, &organizer, &id, "A1 is missing again", |r| {
        province_counts(r)
            .iter()
            .any(|(code, invited, present, absent, missing)| {
                code == "P1"
                    && (*invited, *present, *absent) == (4, 2, 2)
                    && *missing == strings(&["A1", "A3"])
            })
    })
    .await;

    // The CSV names each stay's province.
    let response = t
        .api(
            "GET",
            &format!("/api/meetings/{id}/attendance.csv"),
            Some(&organizer),
            "text/plain",
            b"",
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    let mut reader = csv::Reader::from_reader(response.body.as_bytes());
    let header = reader.headers().expect("a header").clone();
    assert_eq!(header.get(header.len() - 1), Some("province"));
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let (code, province, joined_at) =
        (column("site_code"), column("province"), column("joined_at"));
    let mut provinces_seen = std::collections::BTreeMap::new();
    for row in reader.records() {
        let row = row.expect("a row");
        provinces_seen.insert(row[code].to_string(), row[province].to_string());
        assert!(
            signaling::rfc3339::parse(&row[joined_at]).is_ok(),
            "{row:?}"
        );
    }
    assert_eq!(
        provinces_seen,
        [("A1", "P1"), ("A2", "P1"), ("B1", "P2"), ("P1", "P1")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    );
    drop(raw);
}
