//! Responses still streaming in this process, for duplicates to join.
//!
//! While a guarded response streams from the handler to its first client, the layer
//! keeps a copy of it for the record (at most the stored-response limit). That copy
//! is also what a duplicate arriving mid-stream is served from: it gets the bytes sent
//! so far at once, then the rest as they arrive, instead of waiting for the end (or
//! a 409). Joiners read the shared copy at their own pace; nothing is buffered per
//! joiner.
//!
//! Once a response outgrows the limit, the copy is dropped (the record will say
//! "executed, response not stored") and only a sliding window of the latest bytes
//! ([`WINDOW`]) is kept for the joiners already following. A joiner that falls
//! further behind than the window is **cut off**: its response ends truncated, so
//! memory stays bounded whatever the joiners do. A duplicate that arrives after the
//! copy was dropped cannot get the beginning: it is answered `response-not-stored`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use http_body::Frame;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::body::{BoxError, FrameResult, FrameStream, Truncated};
use super::encoding::Coding;
use super::replay::StoredHead;
use crate::store::{Fingerprint, RecordKey};

/// Bytes kept for joiners once a response has outgrown the stored-response limit.
pub(crate) const WINDOW: usize = 1 << 20;

/// The largest frame a joiner reads from the copy at once.
const JOIN_READ: usize = 64 << 10;

/// How many wake-up lists a [`Registry`] spreads its waiters over.
const WAKE_LISTS: usize = 64;

/// The live streams of one layer.
///
/// A claim that waits for a key also watches for that key's response to start
/// streaming here ([`appeared`](Self::appeared)). Waiters are spread over
/// [`WAKE_LISTS`] lists by the hash of their key, and a stream that starts wakes
/// only its key's list: with one list, every response that started woke every
/// claim in flight (on a network store, every concurrent request), each of which
/// then looked its key up again for nothing.
#[derive(Debug)]
pub(crate) struct Registry {
    map: Mutex<HashMap<RecordKey, Arc<Live>>>,
    appeared: Box<[Notify]>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            appeared: (0..WAKE_LISTS).map(|_| Notify::new()).collect(),
        }
    }
}

impl Registry {
    pub(crate) fn get(&self, id: &RecordKey) -> Option<Arc<Live>> {
        self.map.lock().get(id).cloned()
    }

    /// The wake-up list of `id`'s waiters.
    fn wake_list(&self, id: &RecordKey) -> &Notify {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash =
            BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(id);
        &self.appeared[(hash % self.appeared.len() as u64) as usize]
    }

    pub(crate) fn insert(&self, id: RecordKey, live: Arc<Live>) {
        let list = self.wake_list(&id);
        self.map.lock().insert(id, live);
        list.notify_waiters();
    }

    /// Removes `id` if it is still `live`.
    pub(crate) fn remove(&self, id: &RecordKey, live: &Arc<Live>) {
        let mut map = self.map.lock();
        if map.get(id).is_some_and(|l| Arc::ptr_eq(l, live)) {
            map.remove(id);
        }
    }

    /// Resolves when a live stream for `id` exists that is still open.
    pub(crate) async fn appeared(&self, id: &RecordKey) -> Arc<Live> {
        let list = self.wake_list(id);
        loop {
            let notified = list.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(live) = self.get(id)
                && live.is_open()
            {
                return live;
            }
            notified.await;
        }
    }
}

/// One response streaming to its first client.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) fingerprint: Fingerprint,
    /// The head replayed to joiners.
    pub(crate) head: StoredHead,
    /// The response's content codings (joiners must accept them).
    pub(crate) codings: Vec<Coding>,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// Joiners following the stream (their streams are alive).
    joiners: usize,
    /// The copy was dropped because the body outgrew the limit.
    overflowed: bool,
    /// The record was taken from the copy (the stream is ending).
    taken: bool,
    /// `gap` bytes kept free for the record's prefix, then the body so far; `None`
    /// once the body outgrew `cap`.
    copy: Option<Vec<u8>>,
    gap: usize,
    cap: usize,
    /// After the copy is dropped: the latest bytes, starting at `window_start`.
    window: VecDeque<Bytes>,
    window_start: u64,
    window_len: usize,
    /// Body bytes so far.
    len: u64,
    /// `Some(true)`: ended cleanly; `Some(false)`: broke.
    end: Option<bool>,
}

/// What a duplicate gets from [`Live::join`].
pub(crate) enum Join {
    /// Follow the stream.
    Follow(FrameStream),
    /// Same key, another request: 422.
    Mismatch,
    /// The copy was dropped (over the limit): the beginning is gone.
    TooLarge,
    /// The client does not accept the response's content coding; wait for the record.
    Unacceptable,
    /// The stream is ending (its record is being written): wait for the record.
    Ended,
}

/// Counts a joiner while its stream lives.
struct Joiner(Arc<Live>);

impl Drop for Joiner {
    fn drop(&mut self) {
        self.0.state.lock().joiners -= 1;
    }
}

impl Live {
    pub(crate) fn new(
        fingerprint: Fingerprint,
        head: StoredHead,
        codings: Vec<Coding>,
        cap: usize,
        expected: Option<u64>,
    ) -> Self {
        let gap = head.max_prefix_len();
        // Reserve what the response announced (up to the cap), or a small start.
        let first = expected
            .map_or(16 << 10, |n| usize::try_from(n).unwrap_or(usize::MAX))
            .min(cap);
        Self {
            fingerprint,
            head,
            codings,
            state: Mutex::new(State {
                joiners: 0,
                overflowed: false,
                taken: false,
                copy: Some(Vec::with_capacity(gap + first)),
                gap,
                cap,
                window: VecDeque::new(),
                window_start: 0,
                window_len: 0,
                len: 0,
                end: None,
            }),
            changed: Notify::new(),
        }
    }

    /// Appends body bytes; returns whether the copy still holds the whole body.
    pub(crate) fn push(&self, data: &Bytes) -> bool {
        let mut st = self.state.lock();
        let new_len = st.len + data.len() as u64;
        let gap = st.gap;
        let cap = st.cap;
        let fits = new_len <= cap as u64;
        match st.copy.as_mut() {
            Some(copy) if fits => {
                if copy.is_empty() {
                    copy.resize(gap, 0);
                }
                let need = copy.len() + data.len();
                if need > copy.capacity() {
                    // Grow geometrically, never past the limit.
                    let target = need.max(copy.capacity() * 2).min(gap + cap);
                    copy.reserve_exact(target - copy.len());
                }
                copy.extend_from_slice(data);
            }
            Some(_) => {
                // Outgrown: drop the copy, keep its tail as the joiners' window.
                st.overflowed = true;
                let copy = st.copy.take().unwrap_or_default();
                let body = &copy[gap.min(copy.len())..];
                let tail = &body[body.len().saturating_sub(WINDOW)..];
                st.window_start = st.len - tail.len() as u64;
                if !tail.is_empty() {
                    st.window.push_back(Bytes::copy_from_slice(tail));
                }
                st.window_len = tail.len();
                push_window(&mut st, data.clone());
            }
            None => push_window(&mut st, data.clone()),
        }
        st.len = new_len;
        let whole = st.copy.is_some();
        drop(st);
        self.changed.notify_waiters();
        whole
    }

    /// Still streaming, its record not yet taken.
    pub(crate) fn is_open(&self) -> bool {
        let st = self.state.lock();
        !st.taken && st.end.is_none()
    }

    /// Body bytes so far.
    pub(crate) fn len(&self) -> u64 {
        self.state.lock().len
    }

    /// The record's outcome bytes (prefix, then body), if the copy holds the body.
    /// The copy itself is handed over, unless joiners are still reading it: then the
    /// record is a second copy (at most the limit, only while duplicates follow).
    pub(crate) fn take_record(&self) -> Option<Vec<u8>> {
        let mut st = self.state.lock();
        let len = usize::try_from(st.len).ok()?;
        let gap = st.gap;
        st.taken = true;
        let mut copy = if st.joiners == 0 {
            st.copy.take()?
        } else {
            st.copy.clone()?
        };
        if copy.is_empty() {
            copy.resize(gap, 0);
        }
        let prefix = self.head.prefix(len);
        let start = gap.checked_sub(prefix.len())?;
        copy[start..gap].copy_from_slice(&prefix);
        copy.drain(..start);
        Some(copy)
    }

    /// Marks the end (`clean` or broken) and wakes the joiners.
    pub(crate) fn finish(&self, clean: bool) {
        self.state.lock().end = Some(clean);
        self.changed.notify_waiters();
    }

    /// Lets a duplicate follow the stream from its first byte.
    pub(crate) fn join(
        self: &Arc<Self>,
        fingerprint: &Fingerprint,
        accepts: impl Fn(Coding) -> bool,
        on_cut_off: impl Fn() + Send + Sync + 'static,
    ) -> Join {
        if self.fingerprint != *fingerprint {
            return Join::Mismatch;
        }
        if !self.codings.iter().all(|c| accepts(*c)) {
            return Join::Unacceptable;
        }
        let live = self.clone();
        {
            let mut st = live.state.lock();
            if st.overflowed {
                return Join::TooLarge;
            }
            if st.taken || st.end.is_some() {
                return Join::Ended;
            }
            st.joiners += 1;
        }
        let joiner = Arc::new(Joiner(live.clone()));
        let on_cut_off = Arc::new(on_cut_off);
        let stream = futures_util::stream::unfold(Some(0u64), move |offset| {
            let live = live.clone();
            let on_cut_off = on_cut_off.clone();
            let _joiner = joiner.clone();
            async move {
                let offset = offset?;
                let next = live.next_frame(offset).await;
                match next {
                    Some(Ok(frame)) => {
                        let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                        Some((Ok(frame), Some(offset + n)))
                    }
                    Some(Err(e)) => {
                        if matches!(e.downcast_ref::<Truncated>(), Some(Truncated::Lagged)) {
                            on_cut_off();
                        }
                        Some((Err(e), None))
                    }
                    None => None,
                }
            }
        });
        Join::Follow(Box::pin(stream))
    }

    /// The frame at `offset`, waiting for it; `None` at a clean end.
    async fn next_frame(&self, offset: u64) -> Option<FrameResult> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state.lock();
                if offset < st.len {
                    return Some(read_at(&st, offset));
                }
                match st.end {
                    Some(true) => return None,
                    Some(false) => {
                        return Some(Err(Box::new(Truncated::Upstream(
                            "the live response this duplicate joined broke".into(),
                        )) as BoxError));
                    }
                    None => {}
                }
            }
            notified.await;
        }
    }
}

fn push_window(st: &mut State, data: Bytes) {
    st.window_len += data.len();
    st.window.push_back(data);
    while st.window_len > WINDOW && st.window.len() > 1 {
        if let Some(front) = st.window.pop_front() {
            st.window_len -= front.len();
            st.window_start += front.len() as u64;
        }
    }
}

fn read_at(st: &State, offset: u64) -> FrameResult {
    if let Some(copy) = &st.copy {
        let from = st.gap + usize::try_from(offset).unwrap_or(usize::MAX);
        let to = (from + JOIN_READ).min(copy.len());
        if from < to {
            return Ok(Frame::data(Bytes::copy_from_slice(&copy[from..to])));
        }
    }
    if offset < st.window_start {
        return Err(Box::new(Truncated::Lagged));
    }
    let mut pos = st.window_start;
    for chunk in &st.window {
        let end = pos + chunk.len() as u64;
        if offset < end {
            let skip = usize::try_from(offset - pos).unwrap_or(0);
            return Ok(Frame::data(chunk.slice(skip..)));
        }
        pos = end;
    }
    Err(Box::new(Truncated::Lagged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn live(cap: usize) -> Arc<Live> {
        Arc::new(Live::new(
            Fingerprint([1; 32]),
            StoredHead {
                status: 200,
                headers: vec![],
            },
            vec![],
            cap,
            None,
        ))
    }

    #[test]
    fn a_stream_starting_wakes_only_the_waiters_of_its_key() {
        use std::future::Future;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Wake, Waker};

        struct Wakes(AtomicUsize);
        impl Wake for Wakes {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let reg = Registry::default();
        let a = RecordKey::new("s", "a");
        // A key whose waiters are on another list than `a`'s.
        let b = (0..)
            .map(|i| RecordKey::new("s", format!("b{i}")))
            .find(|b| !std::ptr::eq(reg.wake_list(b), reg.wake_list(&a)))
            .unwrap();
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut waiting = Box::pin(reg.appeared(&a));
        assert!(waiting.as_mut().poll(&mut cx).is_pending());

        reg.insert(b, live(64));
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            0,
            "another key's stream does not wake this waiter"
        );
        reg.insert(a.clone(), live(64));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
    }

    async fn drain(mut s: FrameStream) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        while let Some(f) = s.next().await {
            match f {
                Ok(f) => out.extend_from_slice(f.data_ref().unwrap()),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    fn follow(l: &Arc<Live>) -> FrameStream {
        match l.join(&Fingerprint([1; 32]), |_| true, || {}) {
            Join::Follow(s) => s,
            _ => panic!("cannot join"),
        }
    }

    #[tokio::test]
    async fn joiners_get_what_was_sent_then_the_rest() {
        let l = live(1 << 20);
        l.push(&Bytes::from_static(b"first "));
        let j = tokio::spawn(drain(follow(&l)));
        tokio::task::yield_now().await;
        l.push(&Bytes::from_static(b"second"));
        l.finish(true);
        assert_eq!(j.await.unwrap(), (b"first second".to_vec(), None));
        let rec = l.take_record().unwrap();
        let back = super::super::replay::StoredResponse::from_outcome(&crate::store::Outcome::new(
            crate::store::Codec::Postcard,
            rec,
        ))
        .unwrap();
        assert_eq!(back.body, b"first second");
        assert!(matches!(
            l.join(&Fingerprint([2; 32]), |_| true, || {}),
            Join::Mismatch
        ));
        assert!(matches!(
            l.join(&Fingerprint([1; 32]), |_| true, || {}),
            Join::Ended
        ));
    }

    #[tokio::test]
    async fn a_joiner_still_reading_when_the_record_is_taken_reads_to_the_end() {
        let l = live(1 << 20);
        l.push(&Bytes::from(vec![b'a'; 200 << 10]));
        let joiner = follow(&l);
        l.push(&Bytes::from_static(b"end"));
        let rec = l.take_record().unwrap();
        assert!(rec.len() > 200 << 10);
        l.finish(true);
        let (got, err) = drain(joiner).await;
        assert_eq!(err, None);
        assert_eq!(got.len(), (200 << 10) + 3);
        assert_eq!(l.state.lock().joiners, 0);
    }

    #[tokio::test]
    async fn a_broken_stream_truncates_its_joiners() {
        let l = live(1 << 20);
        l.push(&Bytes::from_static(b"part"));
        let j = tokio::spawn(drain(follow(&l)));
        l.finish(false);
        let (got, err) = j.await.unwrap();
        assert_eq!(got, b"part");
        assert!(err.unwrap().contains("broke"));
    }

    #[tokio::test]
    async fn over_the_cap_the_copy_goes_and_laggards_are_cut_off() {
        let l = live(100);
        let early = follow(&l);
        l.push(&Bytes::from(vec![1u8; 60]));
        assert!(!l.push(&Bytes::from(vec![2u8; 60])));
        assert!(l.take_record().is_none());
        assert!(matches!(
            l.join(&Fingerprint([1; 32]), |_| true, || {}),
            Join::TooLarge
        ));
        // The window keeps the tail; a joiner behind it is cut off.
        for _ in 0..40 {
            l.push(&Bytes::from(vec![3u8; 64 << 10]));
        }
        l.finish(true);
        let (got, err) = drain(early).await;
        assert!(got.is_empty());
        assert!(err.unwrap().contains("too far behind"));
        let st = l.state.lock();
        assert!(st.window_len <= WINDOW + (64 << 10));
    }
}
