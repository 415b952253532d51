//! `wasnap serve`: the HTTP API, the worker, timers, takeover after a
//! crash, conflicts and shutdown, each against a real `wasnap serve`
//! process on a loopback port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::backends::{Backend, TestDb, on_both_backends};
use super::guests::built;

/// A `wasnap serve` process on a database of its own.
pub struct Service {
    child: Child,
    pub address: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Service {
    /// Starts `wasnap --db DB serve` on a free loopback port.
    pub fn start(db: &Path) -> Service {
        Self::start_with(db, &[])
    }

    pub fn start_with(db: &Path, extra: &[&str]) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasnap"))
            .arg("--db")
            .arg(db)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wasnap serve starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let address = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("wasnap serve ended before listening: {seen}");
            };
            seen += &line;
            seen += "\n";
            if let Some(url) = line.split("http://").nth(1) {
                let address = url.split_whitespace().next().unwrap();
                break address.parse().unwrap();
            }
        };
        let stderr = Arc::new(Mutex::new(seen));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut sink = sink.lock().unwrap();
                *sink += &line;
                *sink += "\n";
            }
        });
        Service {
            child,
            address,
            stderr,
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = http(self.address, "GET", path, b"");
        (status, parse(&body))
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, body) = http(self.address, "POST", path, body.to_string().as_bytes());
        (status, parse(&body))
    }

    /// Uploads a module file and returns its hash.
    pub fn upload(&self, path: &str) -> String {
        let bytes = std::fs::read(path).unwrap();
        let (status, body) = http(self.address, "POST", "/api/modules", &bytes);
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        parse(&body)["module"].as_str().unwrap().to_string()
    }

    /// Starts an instance of `module`; returns it after its first run.
    pub fn start_instance(&self, module: &str) -> Value {
        let (status, instance) = self.post("/api/instances", json!({ "module": module }));
        assert_eq!(status, 201, "{instance}");
        instance
    }

    pub fn resume(&self, id: u64, body: Value) -> (u16, Value) {
        self.post(&format!("/api/instances/{id}/resume"), body)
    }

    /// Polls the instance until `done` holds, for up to `limit`.
    pub fn wait_for(&self, id: u64, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let (_, instance) = self.get(&format!("/api/instances/{id}"));
            if done(&instance) {
                return instance;
            }
            assert!(
                start.elapsed() < limit,
                "instance {id} stayed {instance} for {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it
    /// exited with success, and what it said.
    pub fn terminate(mut self) -> (bool, String) {
        signal(&self.child, "TERM");
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(30));
        let said = self.stderr.lock().unwrap().clone();
        (status, said)
    }

    /// Kills the process at once (SIGKILL): a crash.
    pub fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(sent.success());
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        assert!(start.elapsed() < limit, "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()))
}

/// One HTTP/1.1 request on a fresh connection; returns the status and
/// the body.
pub fn http(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    try_http(address, method, path, body).unwrap()
}

/// [`http`], with an error when the connection ends without an answer.
pub fn try_http(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    if response.is_empty() {
        return Err(std::io::Error::other(
            "the connection ended without an answer",
        ));
    }
    Ok(split_response(&response))
}

/// The status and body of a whole HTTP/1.1 response (fixed length or
/// chunked).
pub fn split_response(response: &[u8]) -> (u16, Vec<u8>) {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let mut body = response[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = unchunk(&body);
    }
    (status, body)
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 4 + size..];
    }
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/serve/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A fresh database of `backend`, kept while the first is, and what
/// `--db` takes to open it.
fn database(backend: Backend) -> (TestDb, PathBuf) {
    let db = TestDb::new(backend);
    let location = db.location().to_path_buf();
    (db, location)
}

fn id(instance: &Value) -> u64 {
    instance["id"].as_u64().unwrap()
}

fn values(service: &Service, id: u64) -> Vec<(u64, Option<u64>, String, String)> {
    let (status, versions) = service.get(&format!("/api/instances/{id}/versions"));
    assert_eq!(status, 200);
    versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["parent"].as_u64(),
                v["state"].as_str().unwrap().to_string(),
                v["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A thread's HTTP answer: status and body.
type Answer = std::thread::JoinHandle<std::io::Result<(u16, Vec<u8>)>>;

/// An instance of `waits.wat` whose next run takes `ms` milliseconds,
/// requested from a thread: the instance, and the thread's answer.
fn long_run(service: &Service, ms: u32) -> (u64, Answer) {
    let module = service.upload(&fixture("waits.wat"));
    let id = id(&service.start_instance(&module));
    let address = service.address;
    let answer = std::thread::spawn(move || {
        let body = json!({ "version": 1, "reply": format!("spin {ms}") }).to_string();
        try_http(
            address,
            "POST",
            &format!("/api/instances/{id}/resume"),
            body.as_bytes(),
        )
    });
    service.wait_for(id, Duration::from_secs(10), |i| i["state"] == "running");
    (id, answer)
}

/// The deploy demo queried and updated through the API while it waits:
/// a query commits nothing and reads any version, an update is a new
/// version waiting at the same question; a handler that fails is 422.
#[test]
fn deploy_is_queried_and_updated_through_the_api() {
    let (_dir, db) = database(Backend::Sqlite);
    let service = Service::start(&db);
    let module = service.upload(&built("c", "deploy"));
    let id = id(&service.start_instance(&module));
    let status = |version: Value| {
        service.post(
            &format!("/api/instances/{id}/query/status"),
            json!({ "version": version }),
        )
    };
    let waiting = |machines: u32| json!({ "result": format!("waiting for approval [yes/no] (0 of {machines} machines done)") });
    assert_eq!(status(Value::Null), (200, waiting(3)));
    assert_eq!(values(&service, id).len(), 1, "a query committed a version");

    let (code, updated) = service.post(
        &format!("/api/instances/{id}/update/machines"),
        json!({ "arg": "4" }),
    );
    assert_eq!(
        (code, updated),
        (200, json!({ "result": "machines = 4", "version": 2 }))
    );
    let tree = values(&service, id);
    assert_eq!(tree.len(), 2);
    assert_eq!(tree[1].3, "waiting for approval [yes/no]");
    assert_eq!(status(json!(1)), (200, waiting(3)));
    assert_eq!(status(Value::Null), (200, waiting(4)));

    let (code, missing) = service.post(&format!("/api/instances/{id}/query/nothing"), json!({}));
    assert_eq!(code, 422, "{missing}");
    assert!(
        missing["error"].as_str().unwrap().contains("nothing"),
        "{missing}"
    );
    let (code, _) = service.post("/api/instances/99/query/status", json!({}));
    assert_eq!(code, 404);
    let (status, resumed) = service.resume(id, json!({ "version": 2, "reply": "yes" }));
    assert_eq!(
        (status, &resumed["state"]),
        (200, &json!("sleeping")),
        "{resumed}"
    );
    // The update came through the reply: the sleep waits for 4 machines.
    assert_eq!(
        status_of_head(&service, id),
        "waiting for the maintenance window (0 of 4 machines done)"
    );
}

/// The demo script `guest-workflows/DIR/NAME` as a request's `script`,
/// and its text.
fn demo_script(dir: &str, name: &str) -> (String, Value) {
    let path = format!(
        "{}/guest-workflows/{dir}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let source = std::fs::read_to_string(path).unwrap();
    let script = json!({ "name": name, "source": source });
    (source, script)
}

#[test]
fn a_script_starts_through_the_api() {
    let (_dir, db) = database(Backend::Sqlite);
    let service = Service::start(&db);
    let (source, script) = demo_script("js", "deploy.js");
    let (code, first) = service.post("/api/instances", json!({ "script": script }));
    assert_eq!(code, 201, "{first}");
    assert_eq!(first["value"], "waiting for approval [yes/no]");
    let id = id(&first);
    // Listed as it was given, without its text in every listing.
    let listed = json!({ "name": "deploy.js", "bytes": source.len() });
    assert_eq!((&first["script"], &first["args"]), (&listed, &json!([])));
    let (_, all) = service.get("/api/instances");
    assert!(!all.to_string().contains("maintenance"), "{all}");
    // The script's own handlers answer through the API.
    let (code, updated) = service.post(
        &format!("/api/instances/{id}/update/machines"),
        json!({ "arg": "2" }),
    );
    assert_eq!((code, &updated["result"]), (200, &json!("machines = 2")));
    assert_eq!(
        status_of_head(&service, id),
        "waiting for approval [yes/no] (0 of 2 machines done)"
    );
    let (code, resumed) = service.resume(id, json!({ "version": 2, "reply": "yes" }));
    assert_eq!(
        (code, &resumed["state"]),
        (200, &json!("sleeping")),
        "{resumed}"
    );

    // The runtime module was stored once, like any module.
    let (code, again) = service.post("/api/instances", json!({ "script": script }));
    assert_eq!(code, 201, "{again}");
    let (_, modules) = service.get("/api/modules");
    assert_eq!(modules.as_array().unwrap().len(), 1, "{modules}");

    // A script of no known language, or a body with both or neither.
    let unknown = json!({ "script": { "name": "deploy.rb", "source": "" } });
    let (code, refused) = service.post("/api/instances", unknown);
    assert_eq!(code, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains(".js"),
        "{refused}"
    );
    let module = modules[0]["module"].clone();
    for body in [json!({ "module": module, "script": script }), json!({})] {
        let (code, refused) = service.post("/api/instances", body);
        assert_eq!(code, 400, "{refused}");
    }
}

/// The Python runtime through the API: the approval demo, its branch, and
/// its end. The runtime (12 MB of Wasm) is instrumented and compiled at
/// the first start, half a minute or so.
#[test]
fn a_python_script_runs_the_approval_demo_through_the_api() {
    let (_dir, db) = database(Backend::Sqlite);
    let service = Service::start(&db);
    let (_, script) = demo_script("python", "approval.py");
    let (code, first) = service.post("/api/instances", json!({ "script": script }));
    assert_eq!(code, 201, "{first}");
    assert_eq!(first["value"], "do something");
    let id = id(&first);

    let (code, second) = service.resume(id, json!({ "version": 1 }));
    assert_eq!(
        (code, &second["value"]),
        (200, &json!("ask boss for permission")),
        "{second}"
    );
    let (code, approved) = service.resume(id, json!({ "version": 2, "reply": "true" }));
    assert_eq!(
        (code, &approved["value"]),
        (200, &json!("do another after approved")),
        "{approved}"
    );
    let (code, rejected) = service.resume(
        id,
        json!({ "version": 2, "reply": "false", "branch": true }),
    );
    assert_eq!(
        (code, &rejected["value"]),
        (200, &json!("do another after rejected")),
        "{rejected}"
    );
    let (code, end) = service.resume(id, json!({ "version": 4 }));
    assert_eq!((code, &end["state"]), (200, &json!("finished")), "{end}");
    let tree = values(&service, id);
    let shape: Vec<_> = tree
        .iter()
        .map(|(v, p, s, _)| (*v, *p, s.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (1, None, "suspended"),
            (2, Some(1), "suspended"),
            (3, Some(2), "suspended"),
            (4, Some(2), "suspended"),
            (5, Some(4), "finished"),
        ]
    );
}

/// What the deploy demo's status query says of an instance's head.
fn status_of_head(service: &Service, id: u64) -> String {
    let (code, answer) = service.post(&format!("/api/instances/{id}/query/status"), json!({}));
    assert_eq!(code, 200, "{answer}");
    answer["result"].as_str().unwrap().to_string()
}

#[test]
fn approval_demo_through_the_api() {
    let (_dir, db) = database(Backend::Sqlite);
    let service = Service::start(&db);
    let module = service.upload(&built("c", "approval"));
    let first = service.start_instance(&module);
    assert_eq!(first["state"], "suspended");
    assert_eq!(first["value"], "do something");
    assert_eq!(first["head"], 1);
    assert_eq!(first["wake_at"], Value::Null);
    let id = id(&first);

    let (status, second) = service.resume(id, json!({ "version": 1 }));
    assert_eq!(
        (status, &second["value"]),
        (200, &json!("ask boss for permission"))
    );
    let (status, third) = service.resume(id, json!({ "version": 2, "reply": "true" }));
    assert_eq!(status, 200, "{third}");
    assert_eq!(third["value"], "do another after approved");

    // Version 2 was answered: answering it again is a conflict, and
    // nothing runs...
    let (status, refused) = service.resume(id, json!({ "version": 2, "reply": "false" }));
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("answered already")
    );
    assert_eq!(values(&service, id).len(), 3);
    // ...unless a branch is asked for.
    let (status, branch) = service.resume(
        id,
        json!({ "version": 2, "reply": "false", "branch": true }),
    );
    assert_eq!(status, 200, "{branch}");
    assert_eq!(branch["value"], "do another after rejected");
    assert_eq!(branch["head"], 4);
    let (status, end) = service.resume(id, json!({ "version": 3 }));
    assert_eq!((status, &end["state"]), (200, &json!("finished")));

    let tree = values(&service, id);
    let shape: Vec<_> = tree
        .iter()
        .map(|(v, p, s, _)| (*v, *p, s.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (1, None, "suspended"),
            (2, Some(1), "suspended"),
            (3, Some(2), "suspended"),
            (4, Some(2), "suspended"),
            (5, Some(3), "finished"),
        ]
    );
    let (_, versions) = service.get(&format!("/api/instances/{id}/versions"));
    assert_eq!(versions[2]["reply"], "true");
    assert_eq!(versions[3]["reply"], "false");

    // The inspect view and the snapshot of a version, and 409 for a
    // version that has none.
    let (status, view) = service.get(&format!("/api/instances/{id}/versions/2/inspect"));
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["suspended_in"], "wasnap.yield");
    assert_eq!(view["value"], "ask boss for permission");
    assert!(
        !view["coroutines"][0]["frames"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(view["memories"][0]["pages_in_use"].as_u64().unwrap() > 0);
    let (status, file) = http(
        service.address,
        "GET",
        &format!("/api/instances/{id}/versions/2/snapshot"),
        b"",
    );
    assert_eq!(status, 200);
    let (snapshot, wasm) = wasnap::snapshot::file::decode(&file).unwrap();
    assert_eq!(snapshot.host.yielded, b"ask boss for permission");
    assert_eq!(
        wasm.unwrap(),
        std::fs::read(built("c", "approval")).unwrap()
    );
    let (status, _) = service.get(&format!("/api/instances/{id}/versions/5/snapshot"));
    assert_eq!(status, 409);

    // Errors name their cause, with the right status.
    assert_eq!(service.get("/api/instances/99").0, 404);
    assert_eq!(service.resume(id, json!({ "version": 42 })).0, 404);
    assert_eq!(
        service
            .post("/api/instances/1/resume", json!({"nonsense": 1}))
            .0,
        400
    );
    let missing = "0".repeat(64);
    assert_eq!(
        service
            .post("/api/instances", json!({ "module": missing }))
            .0,
        404
    );
    let (status, bad) = http(
        service.address,
        "POST",
        "/api/modules",
        b"\0asm\x01\0\0\0\x99",
    );
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&bad));

    let (status, list) = service.get("/api/instances");
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, spec) = service.get("/api/openapi.json");
    assert_eq!(status, 200);
    for path in [
        "/api/modules",
        "/api/instances",
        "/api/instances/{id}",
        "/api/instances/{id}/versions",
        "/api/instances/{id}/resume",
        "/api/instances/{id}/query/{name}",
        "/api/instances/{id}/update/{name}",
        "/api/instances/{id}/versions/{version}/snapshot",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is not described");
    }
    let (ok, said) = service.terminate();
    assert!(ok, "{said}");
}

/// Deploy: the question with a deadline, the sleep until the maintenance
/// window that the worker ends by itself, and the escalation when the
/// deadline passes.
#[test]
fn deploy_demo_through_the_api() {
    let (_dir, db) = database(Backend::Sqlite);
    let service = Service::start(&db);
    let module = service.upload(&built("rust", "deploy"));
    let first = service.start_instance(&module);
    let first_id = id(&first);
    assert_eq!(first["value"], "waiting for approval [yes/no]");
    assert_eq!(first["state"], "suspended");
    assert_eq!(first["timer"], "deadline");
    let three_days = 3 * 24 * 3600 * 1000;
    let deadline = first["wake_at"].as_u64().unwrap();
    assert!(deadline > wasnap::runtime::now_ms() + three_days - 60_000);

    let (status, sleeping) = service.resume(first_id, json!({ "version": 1, "reply": "yes" }));
    assert_eq!(status, 200, "{sleeping}");
    assert_eq!(sleeping["state"], "sleeping");
    assert_eq!(sleeping["timer"], "sleep");
    let wake_at = sleeping["wake_at"].as_u64().unwrap();
    // Before its time a resume is refused and says until when...
    let (status, refused) = service.resume(first_id, json!({ "version": 2 }));
    assert_eq!(status, 409, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("sleeps until"));
    // ...and the worker wakes it when the time comes.
    let woken = service.wait_for(first_id, Duration::from_secs(30), |i| i["head"] == 3);
    assert!(wasnap::runtime::now_ms() >= wake_at);
    assert_eq!(woken["value"], "deploying to machine-1");
    for (version, expected) in [(3, "deploying to machine-2"), (4, "deploying to machine-3")] {
        let (status, next) = service.resume(first_id, json!({ "version": version, "reply": "ok" }));
        assert_eq!((status, &next["value"]), (200, &json!(expected)));
    }
    let (_, done) = service.resume(first_id, json!({ "version": 5, "reply": "ok" }));
    assert_eq!(done["state"], "finished");

    // Nobody answers: the deadline passes (woken early here) and the
    // question goes to the release manager.
    let other = service.start_instance(&module);
    let other_id = id(&other);
    let (status, escalated) = service.resume(other_id, json!({ "version": 1, "wake": true }));
    assert_eq!(status, 200, "{escalated}");
    assert_eq!(
        escalated["value"],
        "waiting for approval from the release manager [yes/no]"
    );
    assert_eq!(escalated["timer"], Value::Null);
    // A plain question has no timer to wake.
    let (status, _) = service.resume(other_id, json!({ "version": 2, "wake": true }));
    assert_eq!(status, 409);
    let (status, sleeping) = service.resume(other_id, json!({ "version": 2, "reply": "yes" }));
    assert_eq!((status, &sleeping["state"]), (200, &json!("sleeping")));
    // Woken early on purpose.
    let (status, woken) = service.resume(other_id, json!({ "version": 3, "wake": true }));
    assert_eq!(
        (status, &woken["value"]),
        (200, &json!("deploying to machine-1"))
    );
    service.terminate();
}

on_both_backends! {
/// Timers that fall due while no server runs are run at once when one
/// starts, in the order they fell due.
fn overdue_timers_run_after_a_restart_in_order(backend: Backend) {
    let (_dir, db) = database(backend);
    let service = Service::start(&db);
    let module = service.upload(&fixture("waits.wat"));
    let mut ids = Vec::new();
    for ms in [1500, 1200, 1800] {
        let instance = service.start_instance(&module);
        let (status, slept) = service.resume(
            id(&instance),
            json!({ "version": 1, "reply": format!("sleep {ms}") }),
        );
        assert_eq!(
            (status, &slept["state"]),
            (200, &json!("sleeping")),
            "{slept}"
        );
        ids.push((id(&instance), slept["wake_at"].as_u64().unwrap()));
    }
    let (ok, said) = service.terminate();
    assert!(ok, "{said}");
    // All three fall due while no server runs.
    let last = ids.iter().map(|(_, at)| *at).max().unwrap();
    while wasnap::runtime::now_ms() < last + 100 {
        std::thread::sleep(Duration::from_millis(50));
    }
    // One run at a time, so that the order of commits is the order of
    // claims.
    let service = Service::start_with(&db, &["--workers", "1"]);
    let mut woke = Vec::new();
    for (id, wake_at) in &ids {
        service.wait_for(*id, Duration::from_secs(30), |i| i["head"] == 3);
        let (_, versions) = service.get(&format!("/api/instances/{id}/versions"));
        let committed = versions[2]["created_ms"].as_u64().unwrap();
        assert!(committed >= *wake_at);
        woke.push((committed, *wake_at));
    }
    // Run in the order they fell due: 1200 ms, 1500 ms, 1800 ms.
    let mut by_due = woke.clone();
    by_due.sort_by_key(|(_, due)| *due);
    let commits: Vec<_> = by_due.iter().map(|(committed, _)| *committed).collect();
    assert!(commits.is_sorted(), "{woke:?}");
    service.terminate();
}
}

on_both_backends! {
/// A server killed in the middle of a run: the next one takes its lease
/// over (once its process is gone on SQLite; once the lease expired, on
/// PostgreSQL, where no pid can be checked) and runs the recorded request,
/// once; nothing half-written.
fn a_crashed_servers_work_is_taken_over(backend: Backend) {
    let (_dir, db) = database(backend);
    let service = Service::start(&db);
    let (id, answer) = long_run(&service, 3000);
    std::thread::sleep(Duration::from_millis(300));
    service.crash();
    assert!(
        answer.join().unwrap().is_err(),
        "the killed server answered"
    );
    assert_eq!(
        wasnap::store::Database::open(&db)
            .unwrap()
            .versions(id)
            .unwrap()
            .len(),
        1,
        "a version was committed by a killed run"
    );

    let service = Service::start(&db);
    let done = service.wait_for(id, Duration::from_secs(60), |i| i["head"] == 2);
    assert_eq!(done["value"], "command?");
    assert_eq!(done["state"], "suspended");
    let tree = values(&service, id);
    assert_eq!(tree.len(), 2, "the request ran more than once: {tree:?}");
    assert_eq!(tree[1].1, Some(1));
    service.terminate();
}
}

on_both_backends! {
/// Two people answer the same question at once: one advances the
/// instance, the other gets 409, and only one version is committed.
fn two_answers_to_one_question_conflict(backend: Backend) {
    let (_dir, db) = database(backend);
    let service = Service::start(&db);
    let module = service.upload(&built("wat", "approval"));
    let instance = service.start_instance(&module);
    let id = id(&instance);
    service.resume(id, json!({ "version": 1 }));
    let address = service.address;
    let answers: Vec<_> = ["true", "false"]
        .into_iter()
        .map(|reply| {
            std::thread::spawn(move || {
                let body = json!({ "version": 2, "reply": reply }).to_string();
                http(
                    address,
                    "POST",
                    &format!("/api/instances/{id}/resume"),
                    body.as_bytes(),
                )
                .0
            })
        })
        .collect();
    let mut statuses: Vec<u16> = answers.into_iter().map(|a| a.join().unwrap()).collect();
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let tree = values(&service, id);
    assert_eq!(tree.len(), 3, "{tree:?}");
    service.terminate();
}
}

on_both_backends! {
/// SIGTERM while a run is in progress: the run finishes and commits, then
/// the server exits cleanly.
fn shutdown_lets_the_run_in_progress_finish(backend: Backend) {
    let (_dir, db) = database(backend);
    let service = Service::start(&db);
    let (id, answer) = long_run(&service, 1500);
    let (ok, said) = service.terminate();
    assert!(ok, "{said}");
    assert!(said.contains("shutting down"), "{said}");
    let (status, _) = answer.join().unwrap().unwrap();
    assert_eq!(status, 200);
    let versions = wasnap::store::Database::open(&db)
        .unwrap()
        .versions(id)
        .unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1].value, b"command?");
}
}

/// Several servers on one PostgreSQL database (as on several machines):
/// every timer fires once, in one of them, and requests sent to any of
/// them run once.
#[test]
fn servers_sharing_a_database_fire_each_timer_once() {
    let (_db, db) = database(Backend::Postgres);
    let servers: Vec<Service> = (0..3).map(|_| Service::start(&db)).collect();
    let module = servers[0].upload(&fixture("waits.wat"));
    let mut ids = Vec::new();
    for n in 0..12 {
        let server = &servers[n % servers.len()];
        let instance = id(&server.start_instance(&module));
        let (status, slept) = server.resume(
            instance,
            json!({ "version": 1, "reply": format!("sleep {}", 300 + 50 * n) }),
        );
        assert_eq!(
            (status, &slept["state"]),
            (200, &json!("sleeping")),
            "{slept}"
        );
        ids.push(instance);
    }
    for (n, instance) in ids.iter().enumerate() {
        let server = &servers[(n + 1) % servers.len()];
        server.wait_for(*instance, Duration::from_secs(30), |i| i["head"] == 3);
    }
    // Time for a second firing, were there one.
    std::thread::sleep(Duration::from_secs(2));
    for instance in &ids {
        let tree = values(&servers[0], *instance);
        assert_eq!(tree.len(), 3, "instance {instance}: {tree:?}");
        assert_eq!(tree[2].1, Some(2), "instance {instance}: {tree:?}");
        assert_eq!(tree[2].3, "command?", "instance {instance}: {tree:?}");
    }
    for server in servers {
        let (ok, said) = server.terminate();
        assert!(ok, "{said}");
    }
}

#[path = "../../benches/load/mod.rs"]
mod load;

on_both_backends! {
/// The load test of `benches/serve.rs`, briefly: many instances resumed
/// at once through HTTP, every answer a committed version, none lost or
/// doubled (the throughput is measured by `cargo bench --bench serve`).
fn load_smoke_run(backend: Backend) {
    let (_dir, db) = database(backend);
    let executor = wasnap::Executor::open(&db).unwrap();
    let options = wasnap::server::ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let server = wasnap::server::Server::start(executor, options).unwrap();
    let client = tokio::runtime::Runtime::new().unwrap();
    let instances = client.block_on(load::prepare(
        server.address(),
        &load::guest::salted_guest(1, 1),
        8,
    ));
    let ids: Vec<u64> = instances.iter().map(|(id, _)| *id).collect();
    let settings = load::Load {
        instances: 8,
        connections: 4,
        duration: Duration::from_secs(60),
        max_requests: 160,
    };
    let measured = client.block_on(load::run(server.address(), instances, &settings));
    server.shutdown().unwrap();
    assert_eq!((measured.suspensions, measured.failures), (160, 0));
    let database = wasnap::store::Database::open(&db).unwrap();
    let versions: usize = ids
        .iter()
        .map(|id| database.versions(*id).unwrap().len())
        .sum();
    assert_eq!(versions, 8 + 160);
}
}
