//! The per-device worker thread: a poll loop (epoll, or kqueue on macOS)
//! over the queue kicks, a stop event and any host-side descriptors the
//! device watches.

use std::any::Any;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use virtio_queue::Queue;

use crate::device::{ActivationContext, DeviceError, Interrupt};
use crate::event::{EventFd, Events, Interest, Poller};
use crate::GuestMemory;

/// Device logic driven by the worker. Both callbacks return a bitmask of the
/// queues whose interrupt should be raised.
pub(crate) trait Handler: Send + 'static {
    /// Queue `idx` was kicked (also called once per queue at start).
    fn queue_event(&mut self, idx: usize, queues: &mut [Queue], mem: &GuestMemory) -> u64;
    /// Like [`Handler::queue_event`], for devices that raise an interrupt
    /// as soon as a request is answered rather than once the queue is
    /// drained (a synchronous driver then sends its next request while the
    /// device still looks at the queue). The worker calls this one.
    fn queue_event_eager(
        &mut self,
        idx: usize,
        queues: &mut [Queue],
        mem: &GuestMemory,
        _interrupt: &dyn Interrupt,
    ) -> u64 {
        self.queue_event(idx, queues, mem)
    }
    /// Extra descriptor number `token` became ready (edge-triggered).
    fn extra_event(&mut self, _token: usize, _queues: &mut [Queue], _mem: &GuestMemory) -> u64 {
        0
    }
}

/// A device with a receive queue (0) and a transmit queue (1) whose host
/// side is one descriptor, watched as the worker's only extra descriptor
/// (virtio-console, virtio-net): host data fills receive buffers, guest
/// transmissions go to the host.
pub(crate) trait RxTx: Send + 'static {
    /// Moves host data into the guest's receive buffers; true if any was used.
    fn fill_rx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool;
    /// Forwards the guest's transmissions; true if any buffer was used.
    fn drain_tx(&mut self, queue: &mut Queue, mem: &GuestMemory) -> bool;
}

pub(crate) const RX: usize = 0;
pub(crate) const TX: usize = 1;

impl<T: RxTx> Handler for T {
    fn queue_event(&mut self, idx: usize, queues: &mut [Queue], mem: &GuestMemory) -> u64 {
        let Some(queue) = queues.get_mut(idx) else {
            return 0;
        };
        let used = match idx {
            RX => self.fill_rx(queue, mem),
            TX => self.drain_tx(queue, mem),
            _ => false,
        };
        if used {
            1 << idx
        } else {
            0
        }
    }

    fn extra_event(&mut self, _token: usize, queues: &mut [Queue], mem: &GuestMemory) -> u64 {
        let Some(queue) = queues.get_mut(RX) else {
            return 0;
        };
        if self.fill_rx(queue, mem) {
            1 << RX
        } else {
            0
        }
    }
}

/// A running worker; dropping it without [`Worker::stop`] leaks nothing but
/// leaves the thread to stop when the stop event fires in `Drop`.
pub(crate) struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<Result<Stopped, sandbox_thread::Panicked>>>,
}

/// What a stopped worker hands back: the queues (for their indices) and
/// the handler, unless the device code panicked.
type Stopped = (Vec<Queue>, Option<Box<dyn Any + Send>>);

impl Worker {
    /// Starts the loop on its own thread, confined to the syscall filter
    /// `filter` (`None`: no filter, for disks that run caller code).
    pub fn spawn(
        name: &str,
        mut handler: impl Handler,
        ctx: ActivationContext,
        extra: Vec<RawFd>,
        filter: Option<&'static crate::seccomp::AllowList>,
    ) -> Result<Self, DeviceError> {
        let stop = crate::event::event_fd().map_err(DeviceError::Worker)?;
        let stop_fd = stop.try_clone().map_err(DeviceError::Worker)?;
        let poller = Poller::new().map_err(DeviceError::Worker)?;
        let nq = ctx.queues.len();
        let add = |fd: RawFd, interest: Interest, token: usize| {
            poller
                .add(fd, interest, token as u64)
                .map_err(DeviceError::Worker)
        };
        for (i, k) in ctx.kicks.iter().enumerate() {
            add(k.0.as_raw_fd(), Interest::Read, i)?;
        }
        add(stop_fd.as_raw_fd(), Interest::Read, nq)?;
        for (i, fd) in extra.iter().enumerate() {
            add(*fd, Interest::ReadEdge, nq + 1 + i)?;
        }
        let thread = sandbox_thread::spawn(name, filter, move || {
            let ActivationContext {
                mem,
                mut queues,
                kicks,
                interrupt,
                ..
            } = ctx;
            let _stop_fd = stop_fd;
            // A panic in the device code (a bug reached by guest input)
            // ends this device, not the host process: the transport tells
            // the driver the device needs a reset, and the queues are kept
            // for the transport.
            let run = sandbox_thread::contain(|| {
                serve(
                    &mut handler,
                    &poller,
                    &mut queues,
                    &kicks,
                    &mem,
                    &*interrupt,
                    extra.len(),
                )
            });
            if run.is_err() {
                log::error!(
                    "{}: the device is marked failed",
                    std::thread::current().name().unwrap_or("device")
                );
                interrupt.device_failed();
                return (queues, None);
            }
            let handler: Box<dyn Any + Send> = Box::new(handler);
            (queues, Some(handler))
        })
        .map_err(DeviceError::Worker)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the loop and returns the queues.
    pub fn stop(self) -> Vec<Queue> {
        self.stop_keeping::<()>().0
    }

    /// Stops the loop and returns the queues and the handler (of type
    /// `H`, as spawned), so that the device can serve the same queues
    /// again later with its state intact (a paused or snapshotted VM).
    pub fn stop_keeping<H: 'static>(mut self) -> (Vec<Queue>, Option<H>) {
        let _ = self.stop.write(1);
        let Some((queues, handler)) = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .and_then(Result::ok)
        else {
            return (Vec::new(), None);
        };
        let handler = handler.and_then(|h| h.downcast::<H>().ok()).map(|h| *h);
        (queues, handler)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
        }
    }
}

fn raise(interrupt: &dyn Interrupt, mask: u64) {
    for i in 0..64 {
        if mask & (1 << i) != 0 {
            interrupt.signal_used_queue(i);
        }
    }
}

/// The worker loop: handles kicks (token = queue index), the stop event
/// (token = queue count) and `extra` descriptors until the stop event fires
/// or polling fails.
fn serve(
    handler: &mut impl Handler,
    poller: &Poller,
    queues: &mut [Queue],
    kicks: &[crate::QueueKick],
    mem: &GuestMemory,
    interrupt: &dyn Interrupt,
    extra: usize,
) {
    let nq = queues.len();
    let mut pending = 0u64;
    for i in 0..nq {
        pending |= handler.queue_event_eager(i, queues, mem, interrupt);
    }
    raise(interrupt, pending);
    let mut events = Events::with_capacity(nq + 2 + extra);
    loop {
        match poller.wait(-1, &mut events) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!(
                    "{}: polling failed: {e}",
                    std::thread::current().name().unwrap_or("device")
                );
                return;
            }
        };
        let mut pending = 0u64;
        for token in events.tokens() {
            let token = token as usize;
            if token < nq {
                kicks[token].drain();
                pending |= handler.queue_event_eager(token, queues, mem, interrupt);
            } else if token == nq {
                return;
            } else {
                pending |= handler.extra_event(token - nq - 1, queues, mem);
            }
        }
        raise(interrupt, pending);
    }
}
