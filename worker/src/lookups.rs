//! One room's metadata lookups in flight: a task per wanted video (or playlist) asks the
//! node's [`Metadata`] service and reports back through a bounded channel the room actor
//! reads. A video is asked for once while a lookup for it runs; stopping cancels them all
//! and waits for them.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::PlaylistItem;
use crate::ingest::metadata::{Lookup, Metadata};

/// Results waiting for the room actor.
const RESULTS: usize = 64;
/// Further tries of a video lookup that failed (upstream error, node busy, circuit open),
/// each after the failure's cache time: a hiccup at `queue.add` time does not leave the
/// entry without a duration for good.
const RETRIES: u32 = 2;

/// A finished lookup.
pub(crate) enum LookupResult {
    /// A video and what was found.
    Video(String, Lookup),
    /// A playlist and its videos, or why not.
    Playlist(String, Result<Vec<PlaylistItem>, String>),
}

pub(crate) struct Lookups {
    tx: mpsc::Sender<LookupResult>,
    inflight: HashSet<String>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Lookups {
    /// `cancel` stops every lookup (the node's shutdown token's child).
    pub(crate) fn new(cancel: CancellationToken) -> (Lookups, mpsc::Receiver<LookupResult>) {
        let (tx, rx) = mpsc::channel(RESULTS);
        let lookups = Lookups {
            tx,
            inflight: HashSet::new(),
            cancel,
            tasks: TaskTracker::new(),
        };
        (lookups, rx)
    }

    /// Starts a lookup for each video not already being looked up. The engine hands out at
    /// most one want per queued entry, so this is bounded by the room's queue.
    pub(crate) fn start(&mut self, metadata: &Arc<Metadata>, videos: Vec<String>) {
        for video in videos {
            if !self.inflight.insert(video.clone()) {
                continue;
            }
            let (metadata, tx, cancel) = (metadata.clone(), self.tx.clone(), self.cancel.clone());
            self.tasks.spawn(async move {
                let mut lookup = metadata.lookup(&video, &cancel).await;
                for _ in 0..RETRIES {
                    if !matches!(lookup, Lookup::Failed(_)) {
                        break;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(metadata.retry_after()) => {}
                    }
                    lookup = metadata.lookup(&video, &cancel).await;
                }
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tx.send(LookupResult::Video(video, lookup)) => {}
                }
            });
        }
    }

    /// Reads each playlist (the engine bounds how many a room asks for at once).
    pub(crate) fn start_playlists(
        &mut self,
        metadata: &Arc<Metadata>,
        lists: Vec<(String, usize)>,
    ) {
        for (list, want) in lists {
            let (metadata, tx, cancel) = (metadata.clone(), self.tx.clone(), self.cancel.clone());
            self.tasks.spawn(async move {
                let result = metadata.playlist(&list, want, &cancel).await;
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tx.send(LookupResult::Playlist(list, result)) => {}
                }
            });
        }
    }

    /// The lookup for `video` has reported.
    pub(crate) fn done(&mut self, video: &str) {
        self.inflight.remove(video);
    }

    /// Cancels every lookup and waits for their tasks.
    pub(crate) async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
