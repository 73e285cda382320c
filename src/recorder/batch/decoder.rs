//! The thread that decodes a group commit's records beside its appends and
//! fsync, and frees them once their batch is durable (a batch's frames
//! took 0.4 ms of its 3.6 ms to free on the batch's own thread, the next
//! batch waiting meanwhile): one for the runtime's life, handed from batch to batch with the
//! batch's lists, not one spawned per batch (at 100,000 msgs/s, about 250
//! group commits a second, spawning and ending that thread was about 5 %
//! of the daemon's CPU: `clone`, the new thread's first wake-up, its exit).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
#[cfg(test)]
use std::thread::ThreadId;
use std::time::Duration;

use tracing::warn;

use crate::metrics::thread_cpu;
use crate::quarantine::QuarantinedFrame;
use crate::recorder::records::{Applied, Outgoing};
use crate::wal::SegmentId;

/// A batch's records decoded beside their appends: what they apply, each
/// with the index of its record (its segment is known once appended), and
/// the frames that do not decode, with theirs.
pub(super) struct DecodedBatch {
    pub(super) applied: Vec<Applied>,
    pub(super) quarantined: Vec<(usize, QuarantinedFrame)>,
    /// The index of each applied item's record.
    pub(super) record_of: Vec<usize>,
    /// The CPU time the decoding took.
    pub(super) cpu: Duration,
    /// The list of the last batch's records the thread let go
    /// ([`Decoder::release`]), empty, for the next batch.
    pub(super) released: Vec<Outgoing>,
}

/// What a batch hands the decoder: its records (shared with the appends
/// while both run) and the lists to decode into, empty.
pub(super) struct DecodeJob {
    pub(super) records: Arc<Vec<Outgoing>>,
    /// The segment the records go to unless the WAL rolls over (or leaves
    /// one out) while they are appended: each decoded item is marked with
    /// it, and set again after the appends only where that happened.
    pub(super) segment: SegmentId,
    pub(super) applied: Vec<Applied>,
    pub(super) record_of: Vec<usize>,
}

type Answer = Result<DecodedBatch, Box<dyn Any + Send>>;

/// What the thread is handed.
enum Work {
    /// Decode these records, and answer.
    Decode(DecodeJob),
    /// Let these records go (their batch is durable): their frames' bytes
    /// are freed here rather than on the batch's thread, where the next
    /// batch waits for it. No answer: the emptied list comes back with the
    /// next job's.
    Release(Vec<Outgoing>),
}

/// The decoding thread, or where to reach it. Dropped, its thread ends once
/// it has answered the job it holds.
#[derive(Debug)]
pub(super) struct Decoder {
    jobs: Sender<Work>,
    answers: Receiver<Answer>,
    /// The thread's id, for the tests.
    #[cfg(test)]
    thread: ThreadId,
}

impl Decoder {
    /// Starts the thread; `None` (logged) if the system refuses one, and
    /// the batch decodes on its own thread after its appends instead.
    pub(super) fn start() -> Option<Decoder> {
        let (jobs, job_inbox) = channel::<Work>();
        let (answer_outbox, answers) = channel::<Answer>();
        let started = std::thread::Builder::new()
            .name("wal-decode".to_owned())
            .spawn(move || {
                let mut released = Vec::new();
                for work in job_inbox {
                    let job = match work {
                        Work::Decode(job) => job,
                        Work::Release(mut records) => {
                            // Dropping frames cannot panic.
                            records.clear();
                            released = records;
                            continue;
                        }
                    };
                    // The job's records are let go before the answer, so
                    // the batch takes its list back whole.
                    let answer =
                        catch_unwind(AssertUnwindSafe(|| decode_job(job))).map(|mut decoded| {
                            decoded.released = std::mem::take(&mut released);
                            decoded
                        });
                    if answer_outbox.send(answer).is_err() {
                        return;
                    }
                }
            });
        match started {
            Ok(_handle) => Some(Decoder {
                jobs,
                answers,
                #[cfg(test)]
                thread: _handle.thread().id(),
            }),
            Err(error) => {
                warn!(%error, "cannot start the WAL decode thread; batches decode after their appends");
                None
            }
        }
    }

    /// The thread that decodes.
    #[cfg(test)]
    pub(super) fn thread(&self) -> ThreadId {
        self.thread
    }

    /// Hands `job` to the thread; gives it back if the thread is gone.
    pub(super) fn send(&self, job: DecodeJob) -> Result<(), DecodeJob> {
        self.jobs
            .send(Work::Decode(job))
            .map_err(|error| match error.0 {
                Work::Decode(job) => job,
                Work::Release(_) => unreachable!("a decode job was sent"),
            })
    }

    /// Hands a durable batch's records to the thread to let go; if the
    /// thread is gone they go here, with the send's error.
    pub(super) fn release(&self, records: Vec<Outgoing>) {
        let _ = self.jobs.send(Work::Release(records));
    }

    /// The answer to the job sent; a panic of the decoding is resumed
    /// here, as if it had happened on this thread.
    pub(super) fn answer(&self) -> DecodedBatch {
        match self.answers.recv() {
            Ok(Ok(decoded)) => decoded,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // The thread only ends when this side is dropped, or by a
            // panic outside the guarded call (none can happen there).
            Err(_) => panic!("the WAL decode thread ended without answering"),
        }
    }
}

/// Decodes a job's records (on whichever thread runs it).
pub(super) fn decode_job(job: DecodeJob) -> DecodedBatch {
    let cpu = thread_cpu();
    let DecodeJob {
        records,
        segment,
        mut applied,
        mut record_of,
    } = job;
    applied.reserve(records.len());
    record_of.reserve(records.len());
    let mut quarantined = Vec::new();
    for (index, record) in records.iter().enumerate() {
        match record.decode_onto(segment, &mut applied) {
            Ok(true) => record_of.push(index),
            Ok(false) => {}
            Err(frame) => quarantined.push((index, frame)),
        }
    }
    drop(records);
    DecodedBatch {
        applied,
        quarantined,
        record_of,
        cpu: thread_cpu().saturating_sub(cpu),
        released: Vec::new(),
    }
}
