//! A client for multipathd's control socket. The framing is a native `size_t` length (the
//! command's length plus its NUL) followed by the NUL-terminated command; replies come back the
//! same way. No crate speaks it, and it is small enough not to need one.

use std::os::linux::net::SocketAddrExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// multipathd refuses commands longer than this.
const MAX_COMMAND: usize = 512;
/// A reply larger than this is not a reply we asked for (`show maps json` of thousands of maps
/// stays far below).
const MAX_REPLY: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct Multipathd {
    socket: Socket,
    timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum Socket {
    /// Linux abstract socket name, without the leading NUL.
    Abstract(String),
    Path(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum MultipathdError {
    #[error("cannot reach multipathd at {socket}: {source}")]
    Connect {
        socket: String,
        source: std::io::Error,
    },
    #[error("multipathd did not answer {command:?} within {}s", after.as_secs_f32())]
    Timeout { command: String, after: Duration },
    #[error("talking to multipathd about {command:?}: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
    #[error("multipathd command too long ({len} bytes, at most {MAX_COMMAND})")]
    TooLong { len: usize },
    #[error("multipathd sent a malformed reply to {command:?}")]
    Malformed { command: String },
}

impl Default for Multipathd {
    fn default() -> Self {
        let socket = match std::env::var("MULTIPATH_SOCKET_NAME") {
            Ok(name) if !name.is_empty() => Socket::Abstract(name),
            _ => Socket::Abstract("/org/kernel/linux/storage/multipathd".to_string()),
        };
        Multipathd {
            socket,
            timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Display for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Socket::Abstract(n) => write!(f, "@{n}"),
            Socket::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Multipathd {
    pub fn new(socket: Socket, timeout: Duration) -> Self {
        Multipathd { socket, timeout }
    }

    /// Sends one command and returns the reply text without its trailing NUL.
    pub async fn command(&self, command: &str) -> Result<String, MultipathdError> {
        let len = command.len() + 1;
        if len > MAX_COMMAND {
            return Err(MultipathdError::TooLong { len });
        }
        match tokio::time::timeout(self.timeout, self.exchange(command)).await {
            Ok(r) => r,
            Err(_) => Err(MultipathdError::Timeout {
                command: command.to_string(),
                after: self.timeout,
            }),
        }
    }

    /// Sends a command until multipathd says `ok`, at most `attempts` times, waiting `first`
    /// and then twice as long after each refusal or timeout; returns the last reply. For
    /// commands multipathd refuses while it is busy: `resize map` answers `fail` while the
    /// map waits for udev and `timeout` while another command holds its lock, with nothing
    /// that tells these apart from a lasting refusal, so the caller bounds the attempts.
    pub async fn command_retrying(
        &self,
        command: &str,
        attempts: u32,
        first: Duration,
    ) -> Result<Reply, MultipathdError> {
        let mut delay = first;
        let mut attempt = 1;
        loop {
            let result = self.command(command).await.map(|r| Reply::parse(&r));
            let retry = match &result {
                Ok(Reply::Ok) => false,
                Ok(_) | Err(MultipathdError::Timeout { .. }) => true,
                // Not reachable, or a command it cannot take: asking again will not help.
                Err(_) => false,
            };
            if !retry || attempt >= attempts {
                return result;
            }
            tracing::debug!(
                command,
                attempt,
                ?result,
                "multipathd refused; asking again"
            );
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
            attempt += 1;
        }
    }

    async fn exchange(&self, command: &str) -> Result<String, MultipathdError> {
        let mut stream = self.connect()?;
        let io = |source| MultipathdError::Io {
            command: command.to_string(),
            source,
        };
        let mut frame = Vec::with_capacity(command.len() + 1 + size_of::<usize>());
        frame.extend_from_slice(&(command.len() + 1).to_ne_bytes());
        frame.extend_from_slice(command.as_bytes());
        frame.push(0);
        stream.write_all(&frame).await.map_err(io)?;
        let mut len = [0u8; size_of::<usize>()];
        stream.read_exact(&mut len).await.map_err(io)?;
        let len = reply_len(len).ok_or_else(|| MultipathdError::Malformed {
            command: command.to_string(),
        })?;
        let mut reply = vec![0u8; len];
        stream.read_exact(&mut reply).await.map_err(io)?;
        Ok(reply_text(reply))
    }

    fn connect(&self) -> Result<UnixStream, MultipathdError> {
        let err = |source| MultipathdError::Connect {
            socket: self.socket.to_string(),
            source,
        };
        let std_stream = match &self.socket {
            Socket::Abstract(name) => {
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .map_err(err)?;
                std::os::unix::net::UnixStream::connect_addr(&addr).map_err(err)?
            }
            Socket::Path(p) => std::os::unix::net::UnixStream::connect(p).map_err(err)?,
        };
        std_stream.set_nonblocking(true).map_err(err)?;
        UnixStream::from_std(std_stream).map_err(err)
    }
}

/// The length a reply's header announces; None when it is larger than any reply we ask for.
pub fn reply_len(header: [u8; size_of::<usize>()]) -> Option<usize> {
    Some(usize::from_ne_bytes(header)).filter(|&len| len <= MAX_REPLY)
}

/// A reply's body as text, without its trailing NULs.
pub fn reply_text(mut reply: Vec<u8>) -> String {
    while reply.last() == Some(&0) {
        reply.pop();
    }
    // `show ... json` output is printf-built and may carry odd bytes from device strings.
    String::from_utf8_lossy(&reply).into_owned()
}

/// How multipathd answered a command that changes something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// `fail`, with whatever detail followed (`map or partition in use`, `timeout`, ...).
    Fail(String),
    Other(String),
}

impl Reply {
    pub fn parse(text: &str) -> Reply {
        let t = text.trim();
        if t == "ok" {
            Reply::Ok
        } else if let Some(rest) = t.strip_prefix("fail") {
            Reply::Fail(rest.trim().to_string())
        } else {
            Reply::Other(t.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A stand-in multipathd that answers each command from a table, speaking the real framing.
    async fn fake_server(
        path: PathBuf,
        answers: Vec<(&'static str, &'static str)>,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..answers.len() {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut len = [0u8; 8];
                s.read_exact(&mut len).await.unwrap();
                let mut cmd = vec![0u8; usize::from_ne_bytes(len)];
                s.read_exact(&mut cmd).await.unwrap();
                assert_eq!(cmd.pop(), Some(0), "command must be NUL-terminated");
                let cmd = String::from_utf8(cmd).unwrap();
                let answer = answers
                    .iter()
                    .find(|(c, _)| *c == cmd)
                    .map(|(_, a)| *a)
                    .unwrap_or("fail\n");
                let mut out = (answer.len() + 1).to_ne_bytes().to_vec();
                out.extend_from_slice(answer.as_bytes());
                out.push(0);
                s.write_all(&out).await.unwrap();
                seen.push(cmd);
            }
            seen
        })
    }

    #[tokio::test]
    async fn speaks_the_framing_and_parses_replies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mpd.sock");
        let server = fake_server(
            path.clone(),
            vec![
                ("add map 3600", "ok\n"),
                ("del map 3600", "fail\nmap or partition in use\n"),
            ],
        )
        .await;
        let client = Multipathd::new(Socket::Path(path), Duration::from_secs(2));
        assert_eq!(
            Reply::parse(&client.command("add map 3600").await.unwrap()),
            Reply::Ok
        );
        assert_eq!(
            Reply::parse(&client.command("del map 3600").await.unwrap()),
            Reply::Fail("map or partition in use".into())
        );
        assert_eq!(server.await.unwrap(), vec!["add map 3600", "del map 3600"]);
    }

    /// Answers the n-th connection with `replies[n]`, speaking the real framing.
    async fn scripted_server(
        path: PathBuf,
        replies: Vec<&'static str>,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for answer in replies {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut len = [0u8; 8];
                s.read_exact(&mut len).await.unwrap();
                let mut cmd = vec![0u8; usize::from_ne_bytes(len)];
                s.read_exact(&mut cmd).await.unwrap();
                cmd.pop();
                let mut out = (answer.len() + 1).to_ne_bytes().to_vec();
                out.extend_from_slice(answer.as_bytes());
                out.push(0);
                s.write_all(&out).await.unwrap();
                seen.push(String::from_utf8(cmd).unwrap());
            }
            seen
        })
    }

    #[tokio::test]
    async fn a_busy_multipathd_is_asked_again_until_ok() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mpd.sock");
        let server = scripted_server(path.clone(), vec!["fail\n", "timeout\n", "ok\n"]).await;
        let client = Multipathd::new(Socket::Path(path), Duration::from_secs(2));
        let reply = client
            .command_retrying("resize map mpatha", 5, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(reply, Reply::Ok);
        assert_eq!(server.await.unwrap(), vec!["resize map mpatha"; 3]);
    }

    #[tokio::test]
    async fn a_lasting_refusal_ends_after_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mpd.sock");
        let server = scripted_server(path.clone(), vec!["fail\n"; 3]).await;
        let client = Multipathd::new(Socket::Path(path), Duration::from_secs(2));
        let reply = client
            .command_retrying("resize map mpatha", 3, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(reply, Reply::Fail(String::new()));
        assert_eq!(server.await.unwrap().len(), 3, "exactly the bound");
    }

    #[tokio::test]
    async fn a_silent_daemon_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mpd.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let client = Multipathd::new(Socket::Path(path), Duration::from_millis(200));
        let err = client.command("show maps").await.unwrap_err();
        assert!(matches!(err, MultipathdError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn no_daemon_is_a_connect_error() {
        let client = Multipathd::new(
            Socket::Abstract("lunkeeper-test-nobody-listens".into()),
            Duration::from_secs(1),
        );
        assert!(matches!(
            client.command("show maps").await,
            Err(MultipathdError::Connect { .. })
        ));
    }

    #[tokio::test]
    async fn overlong_command_is_refused_before_sending() {
        let client = Multipathd::default();
        let long = "x".repeat(600);
        assert!(matches!(
            client.command(&long).await,
            Err(MultipathdError::TooLong { .. })
        ));
    }
}
