//! The WASI context each plugin instance gets: only what its pipeline
//! grants (`[pipelines] grants`), and its stdout/stderr captured.

use crate::config::GrantsConfig;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx};

/// Builds the context for one instance. Without grants: no environment,
/// files or network, clocks frozen at 0, random numbers a fixed sequence.
pub fn context(grants: &GrantsConfig, output: &Output) -> wasmtime::Result<WasiCtx> {
    let mut wasi = WasiCtx::builder();
    wasi.stdout(output.clone()).stderr(output.clone());
    for name in &grants.env {
        if let Ok(value) = std::env::var(name) {
            wasi.env(name, value);
        }
    }
    for (guest, host) in &grants.read_dirs {
        wasi.preopened_dir(host, guest, FsPerms::ReadOnly)
            .map_err(|e| {
                wasmtime::Error::msg(format!("grants.read_dirs.{guest}: {}: {e}", host.display()))
            })?;
    }
    wasi.allow_udp(false)
        .allow_ip_name_lookup(false)
        .allow_tcp(!grants.connect.is_empty());
    if !grants.connect.is_empty() {
        let allowed = Arc::new(grants.connect.clone());
        wasi.socket_addr_check(move |addr, usage| {
            // `connect` first binds implicitly to the wildcard address.
            let ok = match usage {
                SocketAddrUse::TcpConnect => allowed.contains(&addr),
                SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                _ => false,
            };
            Box::pin(async move { ok })
        });
    }
    if !grants.clock {
        wasi.wall_clock(Frozen).monotonic_clock(Frozen);
    }
    if !grants.random {
        use rand::SeedableRng;
        wasi.secure_random(rand::rngs::StdRng::seed_from_u64(0))
            .insecure_random(rand::rngs::StdRng::seed_from_u64(1))
            .insecure_random_seed(0);
    }
    Ok(wasi.build())
}

/// A clock that always reads 0.
struct Frozen;

impl HostWallClock for Frozen {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for Frozen {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The last bytes a plugin wrote to stdout and stderr. A Rust panic prints
/// its message there before trapping, so this is what explains a trap.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<VecDeque<u8>>>);

/// How much of a plugin's output is kept.
const OUTPUT_TAIL: usize = 4096;

impl Output {
    fn push(&self, bytes: &[u8]) {
        let mut tail = self.0.lock().unwrap();
        let bytes = &bytes[bytes.len().saturating_sub(OUTPUT_TAIL)..];
        let excess = (tail.len() + bytes.len()).saturating_sub(OUTPUT_TAIL);
        tail.drain(..excess);
        tail.extend(bytes);
    }

    /// Takes what was written since the last call, trimmed.
    pub fn take(&self) -> String {
        let bytes: Vec<u8> = self.0.lock().unwrap().drain(..).collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

impl IsTerminal for Output {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Output {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Output {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Output {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_only_the_tail_and_take_empties_it() {
        let out = Output::default();
        out.push(&vec![b'a'; OUTPUT_TAIL]);
        out.push(b"\npanicked at src/lib.rs:1:1:\nboom\n");
        let text = out.take();
        assert!(text.ends_with("panicked at src/lib.rs:1:1:\nboom"));
        assert!(text.len() <= OUTPUT_TAIL);
        assert_eq!(out.take(), "");
    }
}
