//! Ed25519 nonces made ahead of the signatures that use them, on a thread
//! that runs only when a core would otherwise be idle.
//!
//! An Ed25519 signature (RFC 8032 §5.1.6) is `R = rB`, `S = r + H(R‖A‖M)·a`.
//! Its costly part is `rB`: a fixed-base scalar multiplication and the
//! point's compression, about four fifths of a signature. With RFC 8032's
//! `r = H(prefix‖M)` it can only be computed once the message is known, so
//! every receipt and token paid it on its request's path. The verification
//! equation does not depend on how `r` was chosen, only on it never being
//! used twice and being unpredictable: the signatures made here verify with
//! any Ed25519 implementation (the unit tests check them with ring's and
//! ed25519-dalek's strict verifiers).
//!
//! So `r` is drawn ahead: `r = H(DOMAIN‖n‖32 bytes of the OS's CSPRNG) mod ℓ`,
//! with `n` a counter of this process (no two nonces of one process are the
//! same even if the generator repeated itself), and `R = rB` is computed on
//! a `SCHED_IDLE` thread, which the kernel runs only when no other thread
//! wants the core. A signature then costs one SHA-512 over its message and
//! a scalar multiply-add. Each nonce is used once: it is moved out of the
//! pool, its slot overwritten, and it is wiped when dropped. When the pool
//! is empty (no core was idle for long enough, or the thread could not be
//! given the idle policy), a signature is made the RFC 8032 way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};

use curve25519_dalek::{EdwardsPoint, Scalar};
use sha2::{Digest, Sha512};
use zeroize::Zeroize;

/// Domain separation of the nonce hash.
const DOMAIN: &[u8] = b"licensegate/ed25519-nonce/v1";

/// Nonces kept ready: about 1.6 s of receipts at 10,000 retrievals/s, 1 MiB,
/// made in about 0.4 s of an idle core. The thread refills the pool once it
/// is half empty, in batches of [`BATCH`].
pub const CAPACITY: usize = 16_384;

/// Nonces made per draw of random bytes and per taking of the pool's lock.
const BATCH: usize = 64;

/// Tries at the pool's lock before a signature makes its own nonce (a few
/// microseconds of spinning; the lock is held for well under one).
const LOCK_TRIES: usize = 64;

/// A nonce `r` with its commitment `R = rB` (compressed).
pub struct Nonce {
    r: Scalar,
    big_r: [u8; 32],
}

impl Nonce {
    const SPENT: Nonce = Nonce {
        r: Scalar::ZERO,
        big_r: [0; 32],
    };

    /// The nonce and its commitment.
    pub fn parts(&self) -> (&Scalar, &[u8; 32]) {
        (&self.r, &self.big_r)
    }

    /// A copy, for the pool (the original is wiped when dropped).
    fn copy(&self) -> Nonce {
        Nonce {
            r: self.r,
            big_r: self.big_r,
        }
    }
}

impl Drop for Nonce {
    fn drop(&mut self) {
        self.r.zeroize();
    }
}

/// A pool of nonces and the idle-priority thread that fills it.
pub struct Nonces {
    ready: Mutex<Vec<Nonce>>,
    capacity: usize,
    counter: AtomicU64,
    /// Signatures that found the pool empty.
    missed: AtomicU64,
    filler: OnceLock<std::thread::Thread>,
}

/// The process's pool (see the module's documentation).
pub fn pool() -> &'static Nonces {
    static POOL: OnceLock<&'static Nonces> = OnceLock::new();
    POOL.get_or_init(|| {
        let nonces: &'static Nonces = Box::leak(Box::new(Nonces::new(CAPACITY)));
        nonces.start_filler();
        nonces
    })
}

impl Nonces {
    /// An empty pool of `capacity` nonces, without its thread.
    pub fn new(capacity: usize) -> Self {
        Nonces {
            ready: Mutex::new(Vec::with_capacity(capacity)),
            capacity,
            counter: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            filler: OnceLock::new(),
        }
    }

    /// Takes a nonce if one is ready (never the same twice); wakes the filler
    /// once the pool is half empty.
    pub fn take(&self) -> Option<Nonce> {
        let taken = self.lock_briefly().and_then(|mut ready| {
            let nonce = std::mem::replace(ready.last_mut()?, Nonce::SPENT);
            ready.pop();
            Some((nonce, ready.len()))
        });
        let Some((nonce, left)) = taken else {
            self.missed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if left < self.capacity / 2 {
            if let Some(filler) = self.filler.get() {
                // An atomic swap when the thread is already awake.
                filler.unpark();
            }
        }
        Some(nonce)
    }

    /// The pool's lock, if it can be had within a few tries. A signature
    /// never waits for the filler: at the idle policy, a filler that a
    /// waking request thread preempted while it held the lock would get its
    /// core back only once no other thread wanted it, and a signature
    /// blocked behind it would wait as long (no priority inheritance). It
    /// signs without a nonce instead; the lock is held for the copy of one
    /// nonce, or of a batch of [`BATCH`].
    fn lock_briefly(&self) -> Option<MutexGuard<'_, Vec<Nonce>>> {
        for _ in 0..LOCK_TRIES {
            match self.ready.try_lock() {
                Ok(ready) => return Some(ready),
                Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => std::hint::spin_loop(),
            }
        }
        None
    }

    /// How many signatures found the pool empty or held (and made their own
    /// nonce).
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// Holds the pool's lock (a test's stand-in for a preempted filler).
    #[cfg(test)]
    pub fn hold(&self) -> MutexGuard<'_, Vec<Nonce>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many nonces are ready.
    pub fn ready(&self) -> usize {
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Makes `n` nonces into the pool (up to its capacity) on this thread;
    /// how many it added (none if the OS gave no random bytes).
    pub fn fill(&self, n: usize) -> usize {
        let mut added = 0;
        while added < n {
            let room = self.capacity - self.ready();
            let batch = BATCH.min(n - added).min(room);
            if batch == 0 {
                break;
            }
            let Some(made) = self.make(batch) else {
                break;
            };
            let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
            let fits = made.len().min(self.capacity - ready.len());
            // Copied in, so that dropping `made` wipes every nonce it held
            // (moving them would leave them in its freed buffer).
            ready.extend(made.iter().take(fits).map(Nonce::copy));
            added += fits;
        }
        added
    }

    /// `n` fresh nonces, or none if the OS gave no random bytes.
    fn make(&self, n: usize) -> Option<Vec<Nonce>> {
        let Ok(mut seed) = super::random_bytes(32 * n) else {
            tracing::warn!("no random bytes for Ed25519 nonces: signing without them");
            return None;
        };
        let made = seed
            .chunks_exact(32)
            .map(|random| {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let mut wide: [u8; 64] = Sha512::new()
                    .chain_update(DOMAIN)
                    .chain_update(n.to_le_bytes())
                    .chain_update(random)
                    .finalize()
                    .into();
                let r = Scalar::from_bytes_mod_order_wide(&wide);
                wide.zeroize();
                Nonce {
                    r,
                    big_r: EdwardsPoint::mul_base(&r).compress().to_bytes(),
                }
            })
            .collect();
        seed.zeroize();
        Some(made)
    }

    /// Starts the thread that keeps the pool full, at the idle scheduling
    /// policy. Where that policy cannot be had, there is no such thread: a
    /// thread of ordinary priority would take its cores from the requests.
    fn start_filler(&'static self) {
        let spawned = std::thread::Builder::new()
            .name("ed25519-nonces".into())
            .spawn(move || {
                if let Err(why) = idle_policy() {
                    tracing::info!(%why, "Ed25519 nonces are not made ahead: signatures compute theirs");
                    return;
                }
                loop {
                    // Up to its capacity (less if the OS gives no random bytes),
                    self.fill(self.capacity);
                    // then until a signature finds the pool half empty.
                    std::thread::park();
                }
            });
        match spawned {
            Ok(handle) => {
                let _ = self.filler.set(handle.thread().clone());
            }
            Err(e) => {
                tracing::info!(error = %e, "Ed25519 nonces are not made ahead: signatures compute theirs")
            }
        }
    }
}

/// Puts the calling thread on Linux's `SCHED_IDLE` policy (no privilege is
/// needed to lower one's own priority).
#[cfg(target_os = "linux")]
fn idle_policy() -> std::result::Result<(), String> {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
    .map_err(|e| format!("SCHED_IDLE: {e:?}"))
}

#[cfg(not(target_os = "linux"))]
fn idle_policy() -> std::result::Result<(), String> {
    Err("no idle scheduling policy on this system".into())
}
