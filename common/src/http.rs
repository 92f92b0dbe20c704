//! The smallest HTTP/1.1 server that serves our read-only pages (`--metrics`, `tessera web`):
//! one GET per connection, answered and closed. No keep-alive, no bodies in requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An answer: status line text (`200 OK`), content type and body.
pub struct Reply {
    pub status: &'static str,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn ok(content_type: &'static str, body: String) -> Self {
        Reply { status: "200 OK", content_type, body }
    }

    pub fn not_found(hint: &str) -> Self {
        Reply { status: "404 Not Found", content_type: "text/plain; charset=utf-8", body: format!("not found: {hint}\n") }
    }
}

/// Bind `addr` and answer every `GET path` with `handler(path)` (query string removed) for as
/// long as the runtime runs. Binding errors are returned, so a bad address fails at start.
pub async fn serve<F, Fut>(addr: SocketAddr, handler: F) -> std::io::Result<SocketAddr>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { continue };
            let h = handler.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), answer(conn, &*h)).await;
            });
        }
    });
    Ok(bound)
}

async fn answer<F, Fut>(mut conn: tokio::net::TcpStream, handler: &F) -> std::io::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Reply>,
{
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > 16 << 10 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let r = if method == "GET" {
        handler(path.split('?').next().unwrap_or("").to_string()).await
    } else {
        Reply { status: "405 Method Not Allowed", content_type: "text/plain; charset=utf-8", body: "only GET\n".into() }
    };
    let out = format!("HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}", r.status, r.content_type, r.body.len(), r.body);
    conn.write_all(out.as_bytes()).await?;
    conn.shutdown().await
}
