//! Frames waiting for room on a link, so that a stack never stops reading
//! its link while it waits to write to it.
//!
//! A loop that both reads frames from a link and writes frames to it must
//! not block on the write: when the other end does the same (the sim
//! guest, or a device whose two directions share one task), both can sit
//! in a full channel's `send` while neither reads, and the link is dead.
//! With windows of hundreds of segments in each direction that happens as
//! soon as both directions are busy at once. An outbox keeps what the
//! channel cannot take yet, and the loop sends from it only when the
//! channel has room.
//!
//! It is bounded: a guest that stops reading its link must not grow the
//! host's memory (smoltcp keeps retransmitting to it, UDP replies keep
//! arriving). Past [`MAX_WAITING`] frames new ones are dropped, as a full
//! NIC queue drops them; TCP retransmits what mattered.

use std::collections::VecDeque;

use tokio::sync::mpsc;

/// Frames an outbox holds at most (with windows of 256 KiB per
/// connection, a full window of about 180 frames at MTU 1500 for each of
/// 20 connections).
pub(crate) const MAX_WAITING: usize = 4096;

/// Frames accepted for a link but not yet in its channel.
#[derive(Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Vec<u8>>,
}

/// The link's receiving end is gone.
#[derive(Debug)]
pub(crate) struct Closed;

impl Outbox {
    /// Queues `frames` behind what is waiting, then sends what fits now.
    /// Returns how many frames were dropped because [`MAX_WAITING`] were
    /// already waiting.
    pub(crate) fn send_all(
        &mut self,
        tx: &mpsc::Sender<Vec<u8>>,
        frames: impl IntoIterator<Item = Vec<u8>>,
    ) -> Result<usize, Closed> {
        let mut dropped = 0;
        for f in frames {
            if self.queue.is_empty() {
                // The common case: straight into the channel.
                match tx.try_send(f) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Full(f)) => self.queue.push_back(f),
                    Err(mpsc::error::TrySendError::Closed(_)) => return Err(Closed),
                }
            } else if self.queue.len() < MAX_WAITING {
                self.queue.push_back(f);
            } else {
                dropped += 1;
            }
        }
        self.flush(tx)?;
        Ok(dropped)
    }

    /// Whether the outbox is full (a loop should stop taking frames it
    /// could otherwise hold back at their source).
    pub(crate) fn is_full(&self) -> bool {
        self.queue.len() >= MAX_WAITING
    }

    /// Sends waiting frames in order until the channel is full.
    pub(crate) fn flush(&mut self, tx: &mpsc::Sender<Vec<u8>>) -> Result<(), Closed> {
        while let Some(f) = self.queue.pop_front() {
            match tx.try_send(f) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(f)) => {
                    self.queue.push_front(f);
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(Closed),
            }
        }
        Ok(())
    }

    /// Waits until the channel has room for the first waiting frame and
    /// sends it (never resolves while nothing waits), then whatever else
    /// fits.
    pub(crate) async fn drain(&mut self, tx: &mpsc::Sender<Vec<u8>>) -> Result<(), Closed> {
        if self.queue.is_empty() {
            return std::future::pending().await;
        }
        let permit = tx.reserve().await.map_err(|_| Closed)?;
        if let Some(f) = self.queue.pop_front() {
            permit.send(f);
        }
        self.flush(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::Outbox;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn frames_wait_in_order_for_room_and_a_closed_link_is_reported() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut out = Outbox::default();
        out.send_all(&tx, (0u8..5).map(|i| vec![i])).unwrap();
        assert_eq!(out.queue.len(), 3, "three frames wait");
        assert_eq!(rx.recv().await, Some(vec![0]));
        out.drain(&tx).await.unwrap();
        let mut got = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
        out.drain(&tx).await.unwrap();
        while let Ok(f) = rx.try_recv() {
            got.push(f);
        }
        assert_eq!(got, vec![vec![1], vec![2], vec![3], vec![4]]);
        assert!(out.queue.is_empty());
        drop(rx);
        assert!(out.send_all(&tx, [vec![9]]).is_err());
    }

    #[tokio::test]
    async fn a_link_nobody_reads_holds_at_most_the_bound() {
        let (tx, _rx) = mpsc::channel(4);
        let mut out = Outbox::default();
        let n = super::MAX_WAITING + 100;
        let dropped = out.send_all(&tx, (0..n).map(|_| vec![0u8; 8])).unwrap();
        assert_eq!(out.queue.len(), super::MAX_WAITING);
        assert!(out.is_full());
        assert_eq!(
            dropped,
            n - 4 - super::MAX_WAITING,
            "4 went into the channel"
        );
    }
}
