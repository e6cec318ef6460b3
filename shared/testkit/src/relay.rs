//! A TCP relay on a loopback port in front of one service, which a test can cut: every
//! connection through it drops at once and new ones are refused for a while. What a network
//! blip between one node and Redis looks like to that node, while the others are untouched.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay; stops relaying when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    cuts: watch::Sender<u64>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Relays connections made to [`Relay::addr`] to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cuts, _) = watch::channel(0u64);
        let refuse_until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let (watcher, refusing) = (cuts.clone(), refuse_until.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let refused = refusing
                    .lock()
                    .unwrap()
                    .is_some_and(|until| Instant::now() < until);
                if refused {
                    drop(down);
                    continue;
                }
                let mut cut = watcher.subscribe();
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        // A cut, or the relay dropped: both sockets close here.
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Relay {
            addr,
            cuts,
            refuse_until,
            task,
        }
    }

    /// Drops every connection through the relay and refuses new ones for `outage`.
    pub fn cut(&self, outage: Duration) {
        *self.refuse_until.lock().unwrap() = Some(Instant::now() + outage);
        self.cuts.send_modify(|n| *n += 1);
    }
}
