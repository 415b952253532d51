//! A bounded loopback load on `wasnap serve`: many instances in flight,
//! each resumed again and again through the HTTP API, every resume a
//! durable suspension. Used by `benches/serve.rs` (the measure) and by a
//! short smoke run in the integration tests.

#![allow(dead_code)]

pub mod guest;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How the load is made.
#[derive(Clone, Debug)]
pub struct Load {
    /// Instances in flight.
    pub instances: usize,
    /// HTTP connections; each drives `instances / connections` instances,
    /// one request at a time.
    pub connections: usize,
    /// Stop after this long...
    pub duration: Duration,
    /// ...or after this many resumes in all, whichever comes first.
    pub max_requests: usize,
}

/// What a load measured.
#[derive(Clone, Debug)]
pub struct Measured {
    /// Resumes answered 200, each a committed version.
    pub suspensions: usize,
    /// Answers other than 200.
    pub failures: usize,
    /// Wall time of the load.
    pub elapsed: Duration,
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
}

impl Measured {
    /// Durable suspensions per second.
    pub fn per_second(&self) -> f64 {
        self.suspensions as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`th percentile latency (0..=100).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }
}

/// Uploads `wasm` and starts `load.instances` instances of it.
pub async fn prepare(address: SocketAddr, wasm: &[u8], count: usize) -> Vec<(u64, u64)> {
    let mut client = Client::connect(address).await;
    let (status, body) = client.request("POST", "/api/modules", wasm).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let module: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let start = serde_json::json!({ "module": module["module"] }).to_string();
    let mut instances = Vec::with_capacity(count);
    for _ in 0..count {
        let (status, body) = client
            .request("POST", "/api/instances", start.as_bytes())
            .await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let instance: serde_json::Value = serde_json::from_slice(&body).unwrap();
        instances.push((
            instance["id"].as_u64().unwrap(),
            instance["head"].as_u64().unwrap(),
        ));
    }
    instances
}

/// Resumes `instances` (id, head) over `load.connections` connections
/// until the time or the request budget runs out.
pub async fn run(address: SocketAddr, instances: Vec<(u64, u64)>, load: &Load) -> Measured {
    let connections = load.connections.clamp(1, instances.len().max(1));
    let per_connection = load.max_requests.div_ceil(connections);
    let deadline = Instant::now() + load.duration;
    let mut shares: Vec<Vec<(u64, u64)>> = vec![Vec::new(); connections];
    for (i, instance) in instances.into_iter().enumerate() {
        shares[i % connections].push(instance);
    }
    let started = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| tokio::spawn(drive(address, share, deadline, per_connection)))
        .collect();
    let mut measured = Measured {
        suspensions: 0,
        failures: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for task in tasks {
        let (ok, failed, latencies) = task.await.unwrap();
        measured.suspensions += ok;
        measured.failures += failed;
        measured.latencies.extend(latencies);
    }
    measured.elapsed = started.elapsed();
    measured.latencies.sort();
    measured
}

/// One connection: resumes its instances in turn, each at its head.
async fn drive(
    address: SocketAddr,
    mut instances: Vec<(u64, u64)>,
    deadline: Instant,
    budget: usize,
) -> (usize, usize, Vec<Duration>) {
    let mut client = Client::connect(address).await;
    let (mut ok, mut failed) = (0, 0);
    let mut latencies = Vec::with_capacity(budget.min(1 << 20));
    let mut next = 0;
    while Instant::now() < deadline && ok + failed < budget {
        let (id, head) = instances[next];
        let body = format!(r#"{{"version":{head},"reply":"go"}}"#);
        let sent = Instant::now();
        let (status, answer) = client
            .request(
                "POST",
                &format!("/api/instances/{id}/resume"),
                body.as_bytes(),
            )
            .await;
        latencies.push(sent.elapsed());
        if status == 200 {
            let instance: serde_json::Value = serde_json::from_slice(&answer).unwrap();
            instances[next].1 = instance["head"].as_u64().unwrap();
            ok += 1;
        } else {
            failed += 1;
            eprintln!("load: {status} {}", String::from_utf8_lossy(&answer));
        }
        next = (next + 1) % instances.len();
    }
    (ok, failed, latencies)
}

/// A keep-alive HTTP/1.1 client for one connection.
pub struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    pub async fn connect(address: SocketAddr) -> Client {
        let stream = TcpStream::connect(address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream: BufReader::new(stream),
        }
    }

    /// Sends a request and reads the whole response: status and body.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: wasnap\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {line:?}"));
        let mut length = 0;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.unwrap();
        (status, body)
    }
}
