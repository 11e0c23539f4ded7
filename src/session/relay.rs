//! Moving frames from one side's read buffer to the other side's socket.
//!
//! Consecutive frames that pass unchanged leave as one zero-copy slice of the read buffer;
//! only frames that are replaced or dropped break a run.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::audit::AuditSink;
use crate::audit::RecordDraft;
use crate::net::frame::{announced_len, frame_len, FrameError};
use crate::net::stream::ReadHalf;
use crate::pgerror::{sqlstate, PgError};

/// What to do with one complete frame.
pub enum Action {
    Forward,
    Replace(Bytes),
    Drop,
    /// A statement's whole response, released only once its audit record is durable.
    Audited(Box<Audited>),
}

pub struct Audited {
    pub draft: RecordDraft,
    /// The session context the statement ran in (end user, purpose, break-glass).
    pub context: crate::audit::RecordContext,
    pub frames: Vec<Bytes>,
}

enum Item {
    Bytes(Bytes),
    Audited(Box<Audited>),
}

/// Frames ready to be written, in order.
#[derive(Default)]
pub struct Outbox {
    items: Vec<Item>,
}

impl Outbox {
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.items.push(Item::Bytes(bytes));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub async fn flush_to<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        self.flush_audited(writer, None).await
    }

    /// Writes everything in order; an audited response waits for its record to be durable,
    /// and is replaced by a 58030 error when the record cannot be written. Small frames are
    /// gathered into one write: every send is a syscall and a wake-up of the peer.
    pub async fn flush_audited<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        writer: &mut W,
        audit: Option<&AuditSink>,
    ) -> std::io::Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        if let [Item::Bytes(only)] = self.items.as_slice() {
            // The plain relay's usual case: one zero-copy slice of the read buffer.
            writer.write_all(only).await?;
            // Given back, not cleared: a session waits with an empty outbox most of its life.
            self.items = Vec::new();
            return writer.flush().await;
        }
        if self
            .items
            .iter()
            .any(|item| matches!(item, Item::Audited(_)))
        {
            // Boxed: waiting for an audit record takes far more room than writing, and every
            // session's future would otherwise carry that room while it sits idle.
            return Box::pin(self.flush_records(writer, audit)).await;
        }
        let mut gather = Gather::default();
        for item in std::mem::take(&mut self.items) {
            if let Item::Bytes(chunk) = item {
                gather.push(writer, chunk).await?;
            }
        }
        gather.send(writer).await?;
        writer.flush().await
    }

    /// [`Self::flush_audited`] when some response waits for its audit record.
    async fn flush_records<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        writer: &mut W,
        audit: Option<&AuditSink>,
    ) -> std::io::Result<()> {
        let mut gather = Gather::default();
        for item in std::mem::take(&mut self.items) {
            match item {
                Item::Bytes(chunk) => gather.push(writer, chunk).await?,
                Item::Audited(audited) => {
                    let Audited {
                        draft,
                        context,
                        frames,
                    } = *audited;
                    let written = match audit {
                        // What is already gathered waits too: one write after the record
                        // instead of two, and the client is woken once.
                        Some(sink) => sink.append(draft, context).await.map(|_| ()),
                        None => Ok(()),
                    };
                    match written {
                        Ok(()) => {
                            for frame in frames {
                                gather.push(writer, frame).await?;
                            }
                        }
                        Err(e) => {
                            crate::metrics::get().error(crate::metrics::ErrorKind::Audit);
                            tracing::error!(error = %e, "audit record not written; response withheld");
                            let error = PgError::error(
                                sqlstate::IO_ERROR,
                                "pgveil: the audit log cannot be written, so this result is withheld",
                            );
                            gather.push(writer, error.encode()).await?;
                        }
                    }
                }
            }
        }
        gather.send(writer).await?;
        writer.flush().await
    }
}

/// Frames gathered into one buffer for a single write; large ones go out on their own.
#[derive(Default)]
struct Gather {
    buf: BytesMut,
}

impl Gather {
    const LIMIT: usize = 64 * 1024;

    async fn push<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        writer: &mut W,
        chunk: Bytes,
    ) -> std::io::Result<()> {
        if self.buf.len() + chunk.len() > Self::LIMIT {
            self.send(writer).await?;
            if chunk.len() > Self::LIMIT {
                return writer.write_all(&chunk).await;
            }
        }
        self.buf.extend_from_slice(&chunk);
        Ok(())
    }

    async fn send<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            writer.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Runs `decide` over every complete frame at the front of `buf`, moving the result into
/// `out`. Incomplete trailing bytes stay in `buf`; the buffer grows to fit the next frame.
pub fn drain_frames<E>(
    buf: &mut BytesMut,
    limit: usize,
    out: &mut Outbox,
    mut decide: impl FnMut(&[u8]) -> Result<Action, E>,
) -> Result<(), E>
where
    E: From<FrameError>,
{
    let received = buf.len();
    let mut run = 0;
    while let Some(len) = frame_len(&buf[run..], limit)? {
        match decide(&buf[run..run + len])? {
            Action::Forward => run += len,
            action => {
                if run > 0 {
                    out.push(buf.split_to(run).freeze());
                    run = 0;
                }
                let _ = buf.split_to(len);
                match action {
                    Action::Replace(bytes) => out.push(bytes),
                    Action::Audited(audited) => out.items.push(Item::Audited(audited)),
                    Action::Forward | Action::Drop => {}
                }
            }
        }
    }
    if run > 0 {
        out.push(buf.split_to(run).freeze());
    }
    reserve_for_next(buf, received);
    Ok(())
}

const READ_CHUNK: usize = 16 * 1024;

/// What a connection keeps per direction after a small exchange: room for a typical query
/// or a small response, so 1,000 idle sessions do not each hold two 16 KiB buffers. A read
/// that fills it leaves a partial frame, and the buffer grows to [`READ_CHUNK`] for the rest.
const IDLE_CAPACITY: usize = 2 * 1024;

/// Makes room for the rest of a partly received frame (its length is known once five bytes
/// are in), and gives back memory once everything received was handled: all of it after a
/// small exchange (`received` bytes were handled this time), the excess after a large one.
///
/// An empty buffer that must grow is allocated afresh: `reserve` would take back the whole
/// allocation the handled frames came from once they are dropped, however large it was.
fn reserve_for_next(buf: &mut BytesMut, received: usize) {
    if buf.is_empty() && received >= IDLE_CAPACITY {
        if buf.capacity() > 8 * READ_CHUNK || buf.capacity() < READ_CHUNK / 4 {
            *buf = BytesMut::with_capacity(READ_CHUNK);
        }
        return;
    }
    if buf.is_empty() {
        if buf.capacity() > 2 * IDLE_CAPACITY || buf.capacity() < IDLE_CAPACITY / 2 {
            *buf = BytesMut::with_capacity(IDLE_CAPACITY);
        }
        return;
    }
    let wanted = match announced_len(buf) {
        Some(total) => total.saturating_sub(buf.len()).max(READ_CHUNK / 4),
        None => READ_CHUNK / 4,
    };
    if buf.capacity() - buf.len() < wanted {
        buf.reserve(wanted.max(READ_CHUNK));
    }
}

/// Reads more of a relayed stream into `buf`, like `read_buf`. Once everything received was
/// handled (`buf` empty) and nothing more is there yet, a plain TCP connection waits with its
/// buffer given back: 1,000 idle sessions then hold no read buffers (issue #14). The buffer
/// comes back, as large as it was, when bytes arrive. Cancel-safe, as `read_buf` is.
pub async fn read_more(reader: &mut ReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    if let (ReadHalf::Plain(tcp), true) = (&mut *reader, buf.is_empty()) {
        match tcp.try_read_buf(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let capacity = buf.capacity().max(IDLE_CAPACITY);
        *buf = BytesMut::new();
        tcp.readable().await?;
        buf.reserve(capacity);
    }
    reader.read_buf(buf).await
}

pub fn new_buffer() -> BytesMut {
    BytesMut::with_capacity(IDLE_CAPACITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn forwarded_runs_stay_whole_and_replacements_keep_order() {
        let mut input = frame(b'T', b"a");
        input.extend(frame(b'D', b"b"));
        input.extend(frame(b'C', b"c"));
        input.extend(&frame(b'Z', b"I")[..3]);
        let mut buf = BytesMut::from(&input[..]);
        let mut out = Outbox::default();
        drain_frames::<FrameError>(&mut buf, 1 << 20, &mut out, |f| {
            Ok(if crate::net::frame::tag(f) == b'D' {
                Action::Replace(Bytes::from_static(b"X"))
            } else {
                Action::Forward
            })
        })
        .unwrap();
        let chunks: Vec<&[u8]> = out
            .items
            .iter()
            .map(|i| match i {
                Item::Bytes(b) => &b[..],
                Item::Audited(_) => &[][..],
            })
            .collect();
        assert_eq!(
            chunks,
            vec![&frame(b'T', b"a")[..], b"X", &frame(b'C', b"c")[..]]
        );
        assert_eq!(&buf[..], &frame(b'Z', b"I")[..3]);
    }

    #[test]
    fn a_large_message_leaves_no_large_buffer_behind() {
        let big = frame(b'D', &vec![b'x'; 1 << 20]);
        let mut buf = BytesMut::from(&big[..]);
        let mut out = Outbox::default();
        drain_frames::<FrameError>(&mut buf, usize::MAX >> 1, &mut out, |_| Ok(Action::Drop))
            .unwrap();
        assert!(buf.is_empty());
        assert!(
            buf.capacity() <= READ_CHUNK,
            "kept {} bytes",
            buf.capacity()
        );
    }

    #[tokio::test]
    async fn an_idle_plain_connection_waits_without_its_read_buffer() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        use tokio::io::AsyncWriteExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let (read, _write) = accepted.into_split();
        let mut reader = ReadHalf::Plain(read);

        // Nothing sent: the wait is pending, and a cancelled wait leaves no buffer held.
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        {
            let mut waiting = std::pin::pin!(read_more(&mut reader, &mut buf));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(matches!(waiting.as_mut().poll(&mut cx), Poll::Pending));
        }
        assert_eq!(buf.capacity(), 0);

        // A wait that sees bytes arrive gets its buffer back, as large as it was.
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let read = {
            let mut waiting = std::pin::pin!(read_more(&mut reader, &mut buf));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(matches!(waiting.as_mut().poll(&mut cx), Poll::Pending));
            peer.write_all(b"Q\0\0\0\x0dSELECT 1\0").await.unwrap();
            waiting.await.unwrap()
        };
        assert_eq!(read, 14);
        assert_eq!(&buf[..], b"Q\0\0\0\x0dSELECT 1\0");
        assert!(buf.capacity() >= READ_CHUNK);
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut buf = BytesMut::from(&b"Q\x00\x10\x00\x00"[..]);
        let mut out = Outbox::default();
        let result = drain_frames::<FrameError>(&mut buf, 1024, &mut out, |_| Ok(Action::Forward));
        assert!(matches!(result, Err(FrameError::TooLarge { .. })));
    }
}
