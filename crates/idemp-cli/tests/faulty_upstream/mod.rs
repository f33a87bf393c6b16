//! A scripted raw-TCP upstream: it reads each request (head and `Content-Length`
//! body), counts it as an execution, then answers with exactly the bytes, pauses,
//! resets and closes its script says. For the faults a real HTTP server library would
//! never produce: folded headers, control bytes, two `Content-Length`s, truncated
//! bodies, resets after the request, stalls.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One step of an answer.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait.
    Sleep(Duration),
    /// Never answer again (the connection stays open until the peer closes it).
    Hang,
    /// Reset the connection (SO_LINGER 0, then close).
    Reset,
    /// Close the connection (FIN).
    Close,
}

pub fn send(bytes: impl AsRef<[u8]>) -> Step {
    Step::Send(bytes.as_ref().to_vec())
}

/// A complete response with a JSON body.
pub fn response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub struct FaultyUpstream {
    pub addr: SocketAddr,
    executions: Arc<AtomicUsize>,
    /// The request lines received (`POST /x HTTP/1.1`), in order.
    lines: Arc<Mutex<Vec<String>>>,
    /// The script for the next requests, in order; the last one repeats.
    scripts: Arc<Mutex<Vec<Vec<Step>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyUpstream {
    /// Answers every request with `script`.
    pub async fn start(script: Vec<Step>) -> Self {
        Self::start_with(vec![script]).await
    }

    /// Answers the n-th request with `scripts[n]` (the last one repeats).
    pub async fn start_with(scripts: Vec<Vec<Step>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let executions = Arc::new(AtomicUsize::new(0));
        let scripts = Arc::new(Mutex::new(scripts));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ex, sc, li) = (executions.clone(), scripts.clone(), lines.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (ex, sc, li) = (ex.clone(), sc.clone(), li.clone());
                tokio::spawn(serve(stream, ex, sc, li));
            }
        });
        Self {
            addr,
            executions,
            lines,
            scripts,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received whole (each one an execution of the side effect).
    pub fn executions(&self) -> usize {
        self.executions.load(Ordering::SeqCst)
    }

    /// The request lines received, in order.
    pub fn request_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    ex: Arc<AtomicUsize>,
    sc: Arc<Mutex<Vec<Vec<Step>>>>,
    lines: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then Content-Length bytes.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let line = head.lines().next().unwrap_or("").to_owned();
        let original = String::from_utf8_lossy(&buf[..line.len()]).into_owned();
        lines.lock().unwrap().push(original);
        buf.drain(..head_end + len);
        let n = ex.fetch_add(1, Ordering::SeqCst);
        let script = {
            let s = sc.lock().unwrap();
            s.get(n).or(s.last()).cloned().unwrap_or_default()
        };
        for step in script {
            match step {
                Step::Send(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                    let _ = stream.flush().await;
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Hang => {
                    // Hold the connection open until the peer goes away.
                    let mut sink = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                    return;
                }
                Step::Reset => {
                    let _ = stream.set_zero_linger();
                    return;
                }
                Step::Close => return,
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response read by [`raw_request`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close` over a fresh socket, read to EOF
/// (no limit on header lines, unlike hyper-based clients). `None` when the connection
/// ends without a response head.
pub async fn raw_request(addr: SocketAddr, head: &str, body: &[u8]) -> Option<RawResponse> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut req = head.trim_end().replace('\n', "\r\n").replace("\r\r", "\r");
    req.push_str(&format!(
        "\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.ok()?;
    s.write_all(body).await.ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    let end = find(&buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = find(b, b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..i])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 || b.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
    out
}
