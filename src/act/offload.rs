//! Blocking calls (device opens, fsync, sysfs writes, secret reads, node-record writes) run on
//! detached threads under a deadline, never on the event loop.
//!
//! A write to sysfs or an fsync can sleep in the kernel for as long as the device is stuck, and
//! nothing can interrupt it. Such a thread is left behind when its deadline passes: it is a
//! plain `std::thread`, not a tokio blocking thread, because a runtime waits for its blocking
//! threads when it is dropped and `apply` or the daemon could then never exit. Two limits keep
//! the threads left behind from piling up while a device stays stuck:
//! - one call at a time per object (a sysfs attribute, a device node, a record file): a later
//!   call waits for the one running, and is refused at once while that one is stuck;
//! - at most `max_stuck` threads stuck in all; beyond that every call is refused until one
//!   returns.
//!
//! Both refusals are transient errors: the engine retries them later like any other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Threads stuck in the kernel that lunkeeper tolerates before it refuses new blocking calls.
pub const MAX_STUCK: usize = 16;

/// Blocking calls only need a small stack; a stuck thread should cost little.
const STACK_SIZE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    #[error("{what} did not return within {}s (the kernel is still waiting on the device)", after.as_secs_f32())]
    Timeout { what: String, after: Duration },
    #[error(
        "{what}: an earlier call on {object} is still stuck in the kernel; not starting another"
    )]
    StillStuck { what: String, object: String },
    #[error("{what}: an earlier call on {object} did not return within {}s", after.as_secs_f32())]
    Queued {
        what: String,
        object: String,
        after: Duration,
    },
    #[error("{what}: {stuck} calls are stuck in the kernel already; not starting another")]
    TooManyStuck { what: String, stuck: usize },
    #[error("{what}: cannot start a thread: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
}

/// The detached threads running blocking calls, shared by everything that acts on one host.
#[derive(Debug, Clone)]
pub struct Offload {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    max_stuck: usize,
    state: Mutex<State>,
    /// Signalled whenever a call returns, so calls queued on its object look again.
    returned: Notify,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Calls whose thread has not returned, by id.
    running: HashMap<u64, Call>,
    /// The call that holds each object.
    objects: HashMap<String, u64>,
    /// How many of `running` are past their deadline.
    stuck: usize,
}

#[derive(Debug)]
struct Call {
    object: Option<String>,
    stuck: bool,
}

impl Default for Offload {
    fn default() -> Self {
        Offload::new(MAX_STUCK)
    }
}

impl Offload {
    pub fn new(max_stuck: usize) -> Self {
        Offload {
            shared: Arc::new(Shared {
                max_stuck,
                state: Mutex::new(State::default()),
                returned: Notify::new(),
            }),
        }
    }

    /// Threads past their deadline that have not returned yet.
    pub fn stuck(&self) -> usize {
        self.shared.lock().stuck
    }

    /// Runs `call` on its own thread and waits for it until `deadline`. `object` names what the
    /// call touches (a sysfs attribute, a device node); calls on one object run one at a time.
    /// `what` says what the call does, for errors.
    pub async fn run<T, F>(
        &self,
        what: &str,
        object: Option<&str>,
        deadline: Duration,
        call: F,
    ) -> Result<T, OffloadError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let until = Instant::now() + deadline;
        let id = self.admit(what, object, deadline, until).await?;
        let (tx, rx) = oneshot::channel();
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("lunkeeper-io".into())
            .stack_size(STACK_SIZE)
            .spawn(move || {
                // Frees the object even if `call` panics.
                let _returned = Returned { shared, id };
                // The receiver is gone when the deadline passed first; the result is dropped.
                let _ = tx.send(call());
            });
        if let Err(source) = spawned {
            self.shared.returned_call(id);
            return Err(OffloadError::Spawn {
                what: what.to_string(),
                source,
            });
        }
        match tokio::time::timeout_at(until, rx).await {
            Ok(Ok(value)) => Ok(value),
            // The thread ended without sending: `call` panicked. Reported like a timeout
            // rather than taking the daemon down; the thread is gone, so nothing is stuck.
            Ok(Err(_)) => Err(OffloadError::Timeout {
                what: format!("{what} (the call panicked)"),
                after: deadline,
            }),
            Err(_) => {
                self.shared.mark_stuck(id);
                tracing::warn!(
                    what,
                    object = object.unwrap_or(""),
                    after_s = deadline.as_secs_f32(),
                    stuck = self.stuck(),
                    "a blocking call passed its deadline; its thread is left behind"
                );
                Err(OffloadError::Timeout {
                    what: what.to_string(),
                    after: deadline,
                })
            }
        }
    }

    /// Drops `value` (e.g. closes a block device, which flushes it) on a detached thread that
    /// nobody waits for. It holds `object` until it returns and counts as stuck until then, so
    /// a close that hangs keeps later calls on that device out and counts toward the bound;
    /// it is started even beyond the bound, since the value must be let go of somewhere.
    pub fn drop_later<T: Send + 'static>(&self, object: &str, value: T) {
        let id = {
            let mut state = self.shared.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.running.insert(
                id,
                Call {
                    object: Some(object.to_string()),
                    stuck: true,
                },
            );
            state.stuck += 1;
            state.objects.insert(object.to_string(), id);
            id
        };
        let shared = Arc::clone(&self.shared);
        let value = Arc::new(Mutex::new(Some(value)));
        let for_thread = Arc::clone(&value);
        let spawned = std::thread::Builder::new()
            .name("lunkeeper-io".into())
            .stack_size(STACK_SIZE)
            .spawn(move || {
                let _returned = Returned { shared, id };
                drop(
                    for_thread
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take(),
                );
            });
        if spawned.is_err() {
            // No thread to be had: let go of it here rather than keep it forever.
            drop(value.lock().unwrap_or_else(PoisonError::into_inner).take());
            self.shared.returned_call(id);
        }
    }

    /// Registers a call, waiting (until `until`) for an earlier call on the same object.
    async fn admit(
        &self,
        what: &str,
        object: Option<&str>,
        deadline: Duration,
        until: Instant,
    ) -> Result<u64, OffloadError> {
        loop {
            // Created before looking, so a return between the look and the wait is not missed.
            let returned = self.shared.returned.notified();
            {
                let mut state = self.shared.lock();
                let holder = object.and_then(|o| state.objects.get(o).copied());
                match holder.and_then(|id| state.running.get(&id)) {
                    Some(call) if call.stuck => {
                        return Err(OffloadError::StillStuck {
                            what: what.to_string(),
                            object: object.unwrap_or_default().to_string(),
                        })
                    }
                    Some(_) => {}
                    None => {
                        if state.stuck >= self.shared.max_stuck {
                            return Err(OffloadError::TooManyStuck {
                                what: what.to_string(),
                                stuck: state.stuck,
                            });
                        }
                        let id = state.next_id;
                        state.next_id += 1;
                        state.running.insert(
                            id,
                            Call {
                                object: object.map(str::to_string),
                                stuck: false,
                            },
                        );
                        if let Some(o) = object {
                            state.objects.insert(o.to_string(), id);
                        }
                        return Ok(id);
                    }
                }
            }
            if tokio::time::timeout_at(until, returned).await.is_err() {
                return Err(OffloadError::Queued {
                    what: what.to_string(),
                    object: object.unwrap_or_default().to_string(),
                    after: deadline,
                });
            }
        }
    }
}

/// Marks a call returned when its thread ends, however it ends.
struct Returned {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Returned {
    fn drop(&mut self) {
        self.shared.returned_call(self.id);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent under every lock (no call in it can panic halfway).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mark_stuck(&self, id: u64) {
        let mut state = self.lock();
        if let Some(call) = state.running.get_mut(&id) {
            if !call.stuck {
                call.stuck = true;
                state.stuck += 1;
            }
        }
    }

    fn returned_call(&self, id: u64) {
        {
            let mut state = self.lock();
            if let Some(call) = state.running.remove(&id) {
                if call.stuck {
                    state.stuck -= 1;
                }
                if let Some(o) = call.object {
                    if state.objects.get(&o) == Some(&id) {
                        state.objects.remove(&o);
                    }
                }
            }
        }
        self.returned.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A call that blocks until the test lets it go, like a write stuck in the kernel.
    fn blocked() -> (mpsc::Sender<()>, impl FnOnce() -> u32 + Send + 'static) {
        let (release, wait) = mpsc::channel::<()>();
        (release, move || {
            let _ = wait.recv();
            7
        })
    }

    async fn settle(offload: &Offload, stuck: usize) {
        for _ in 0..200 {
            if offload.stuck() == stuck {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("stuck stays {} instead of {stuck}", offload.stuck());
    }

    #[tokio::test]
    async fn a_call_that_returns_gives_its_value() {
        let offload = Offload::new(2);
        let v = offload
            .run("test", Some("a"), Duration::from_secs(5), || 41 + 1)
            .await
            .unwrap();
        assert_eq!(v, 42);
        assert_eq!(offload.stuck(), 0);
    }

    #[tokio::test]
    async fn the_deadline_fires_while_the_call_blocks_and_the_thread_is_left_behind() {
        let offload = Offload::new(2);
        let (release, call) = blocked();
        let start = std::time::Instant::now();
        let r = offload
            .run("write", Some("a"), Duration::from_millis(100), call)
            .await;
        assert!(matches!(r, Err(OffloadError::Timeout { .. })), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(offload.stuck(), 1);
        release.send(()).unwrap();
        settle(&offload, 0).await;
        // The object is free again once the thread returned.
        let v = offload
            .run("write", Some("a"), Duration::from_secs(5), || 1)
            .await;
        assert_eq!(v.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_second_call_on_a_stuck_object_is_refused_at_once() {
        let offload = Offload::new(4);
        let (release, call) = blocked();
        let r = offload
            .run("write", Some("a"), Duration::from_millis(50), call)
            .await;
        assert!(matches!(r, Err(OffloadError::Timeout { .. })));
        let start = std::time::Instant::now();
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let r = offload
            .run("write", Some("a"), Duration::from_secs(10), move || {
                flag.store(true, std::sync::atomic::Ordering::SeqCst)
            })
            .await;
        assert!(matches!(r, Err(OffloadError::StillStuck { .. })), "{r:?}");
        assert!(start.elapsed() < Duration::from_millis(500));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        // Another object is not held up.
        assert_eq!(
            offload
                .run("write", Some("b"), Duration::from_secs(5), || 2)
                .await
                .unwrap(),
            2
        );
        release.send(()).unwrap();
        settle(&offload, 0).await;
    }

    #[tokio::test]
    async fn a_call_on_a_busy_object_waits_for_the_running_one() {
        let offload = Offload::new(4);
        let (release, call) = blocked();
        let first = offload.run("scan", Some("host3"), Duration::from_secs(10), call);
        let second = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = offload
                .run("scan", Some("host3"), Duration::from_secs(10), || 8)
                .await;
            (r, std::time::Instant::now())
        };
        let release_later = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let at = std::time::Instant::now();
            release.send(()).unwrap();
            at
        };
        let (a, (b, b_at), released_at) = tokio::join!(first, second, release_later);
        assert_eq!(a.unwrap(), 7);
        assert_eq!(b.unwrap(), 8);
        assert!(
            b_at >= released_at,
            "the second call ran only after the first"
        );
    }

    #[tokio::test]
    async fn a_queued_call_gives_up_at_its_own_deadline() {
        let offload = Offload::new(4);
        let (release, call) = blocked();
        let first = offload.run("scan", Some("host3"), Duration::from_millis(400), call);
        let second = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            offload
                .run("scan", Some("host3"), Duration::from_millis(100), || 8)
                .await
        };
        let (a, b) = tokio::join!(first, second);
        assert!(matches!(a, Err(OffloadError::Timeout { .. })), "{a:?}");
        assert!(matches!(b, Err(OffloadError::Queued { .. })), "{b:?}");
        release.send(()).unwrap();
        settle(&offload, 0).await;
    }

    #[tokio::test]
    async fn stuck_threads_are_bounded() {
        let offload = Offload::new(2);
        let mut releases = Vec::new();
        for object in ["a", "b"] {
            let (release, call) = blocked();
            releases.push(release);
            let r = offload
                .run("write", Some(object), Duration::from_millis(30), call)
                .await;
            assert!(matches!(r, Err(OffloadError::Timeout { .. })));
        }
        assert_eq!(offload.stuck(), 2);
        let start = std::time::Instant::now();
        for object in [Some("c"), None] {
            let r = offload
                .run("write", object, Duration::from_secs(10), || 3)
                .await;
            assert!(
                matches!(r, Err(OffloadError::TooManyStuck { stuck: 2, .. })),
                "{r:?}"
            );
        }
        assert!(start.elapsed() < Duration::from_millis(500));
        // One returns: calls are accepted again.
        releases.remove(0).send(()).unwrap();
        settle(&offload, 1).await;
        assert_eq!(
            offload
                .run("write", Some("c"), Duration::from_secs(5), || 3)
                .await
                .unwrap(),
            3
        );
        for r in releases {
            r.send(()).unwrap();
        }
        settle(&offload, 0).await;
    }

    #[tokio::test]
    async fn a_call_that_panics_frees_its_object() {
        let offload = Offload::new(2);
        let r: Result<(), _> = offload
            .run("write", Some("a"), Duration::from_secs(5), || {
                panic!("boom")
            })
            .await;
        assert!(matches!(r, Err(OffloadError::Timeout { .. })), "{r:?}");
        assert_eq!(
            offload
                .run("write", Some("a"), Duration::from_secs(5), || 1)
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn a_value_dropped_later_holds_its_object_until_it_is_gone() {
        struct Slow(mpsc::Receiver<()>);
        impl Drop for Slow {
            fn drop(&mut self) {
                let _ = self.0.recv();
            }
        }
        let offload = Offload::new(2);
        let (release, wait) = mpsc::channel();
        offload.drop_later("dev/sdb", Slow(wait));
        assert_eq!(offload.stuck(), 1);
        let r = offload
            .run("open", Some("dev/sdb"), Duration::from_secs(5), || 1)
            .await;
        assert!(matches!(r, Err(OffloadError::StillStuck { .. })), "{r:?}");
        release.send(()).unwrap();
        settle(&offload, 0).await;
        assert_eq!(
            offload
                .run("open", Some("dev/sdb"), Duration::from_secs(5), || 1)
                .await
                .unwrap(),
            1
        );
    }

    #[test]
    fn a_runtime_with_a_stuck_call_shuts_down_at_once() {
        let offload = Offload::new(2);
        let (_keep_blocked, call) = blocked();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = runtime.block_on(offload.run("write", Some("a"), Duration::from_millis(30), call));
        assert!(matches!(r, Err(OffloadError::Timeout { .. })));
        let start = std::time::Instant::now();
        drop(runtime);
        assert!(start.elapsed() < Duration::from_millis(500));
        assert_eq!(offload.stuck(), 1);
    }
}
