//! Frame splitting and message decoding (`src/net/`, `session::relay::drain_frames`) on
//! arbitrary bytes: nothing panics, frames pgveil forwards leave as the very bytes that
//! arrived however the stream is chunked, and what decodes re-encodes to the same message.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgveil::net::backend::{BackendMessage, DataRow, ParameterDescription, RowDescription};
use pgveil::net::frame::{self, FrameError};
use pgveil::net::frontend::{Bind, FrontendMessage, FrontendTag, Parse};
use pgveil::net::{auth, startup};
use pgveil::session::relay::{drain_frames, Action, Outbox};

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    relay_is_transparent(data);
    for raw in split_by_length_field(data) {
        frontend(raw);
        backend(raw);
    }
    startup_packets(data);
    auth_bodies(data);
});

/// The frames at the front of `data`, found by reading the format itself (tag, length
/// including itself, body), independently of `net::frame`.
fn split_by_length_field(data: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut rest = data;
    while rest.len() >= 5 {
        let length = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if !(4..=LIMIT).contains(&length) || rest.len() < length + 1 {
            break;
        }
        let (frame, tail) = rest.split_at(length + 1);
        frames.push(frame);
        rest = tail;
    }
    frames
}

/// Feeds `data` to the relay's splitter in chunks of `chunk` bytes, forwarding every frame
/// except Terminate (`X`), which is replaced by a marker. Returns what left and what stayed.
fn relay(data: &[u8], chunk: usize, limit: usize) -> Result<(Vec<u8>, Vec<u8>), FrameError> {
    let mut buf = BytesMut::new();
    let mut out = Outbox::default();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        drain_frames::<FrameError>(&mut buf, limit, &mut out, |f| {
            let n = frame::frame_len(f, limit).ok().flatten();
            assert_eq!(n, Some(f.len()), "decide got an incomplete frame");
            Ok(if frame::tag(f) == b'X' {
                Action::Replace(Bytes::from_static(b"<X>"))
            } else {
                Action::Forward
            })
        })?;
    }
    Ok((written(&mut out), buf.to_vec()))
}

fn relay_is_transparent(data: &[u8]) {
    let frames = split_by_length_field(data);
    let consumed: usize = frames.iter().map(|f| f.len()).sum();
    let mut expected = Vec::new();
    for f in &frames {
        expected.extend_from_slice(if f[0] == b'X' { b"<X>" } else { f });
    }
    for chunk in [1, 7, data.len().max(1)] {
        match relay(data, chunk, LIMIT) {
            Ok((out, left)) => {
                assert_eq!(out, expected, "chunk {chunk}");
                assert_eq!(left, &data[consumed..], "chunk {chunk}");
            }
            // Only a bad length field stops the relay, and only where the format says so.
            Err(FrameError::BadLength { length, .. }) => assert!(length < 4),
            Err(FrameError::TooLarge { length, limit, .. }) => assert!(length > limit),
        }
    }
    // A small limit refuses a long frame as soon as its length field is in.
    if let Err(FrameError::TooLarge { length, .. }) = relay(data, 5, 64) {
        assert!(length > 64);
    }
}

/// Runs an Outbox's writes into memory (writing to a Vec never waits).
fn written(out: &mut Outbox) -> Vec<u8> {
    let mut sink = Vec::new();
    {
        let mut flush = pin!(out.flush_to(&mut sink));
        match flush.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => assert!(result.is_ok()),
            Poll::Pending => panic!("writing to memory waited"),
        }
    }
    sink
}

fn frontend(raw: &[u8]) {
    let Ok(tag) = FrontendTag::of(raw) else {
        return;
    };
    let body = frame::body(raw);
    match tag.decode(raw) {
        Ok(FrontendMessage::Parse(parse)) => assert_eq!(&parse.encode()[..], raw),
        Ok(FrontendMessage::Bind(header)) => {
            if let Ok(mut bind) = header.bind() {
                assert_eq!(&bind.encode()[..], raw);
                assert_eq!(Bind::decode(body).as_ref(), Ok(&bind));
                let params = bind.params.len();
                let formats: Vec<i16> = (0..params).map(|i| bind.param_format(i)).collect();
                bind.expand_param_formats();
                assert_eq!(bind.param_formats, formats);
                assert_eq!(Bind::decode(&bind.encode()[5..]).as_ref(), Ok(&bind));
            }
        }
        Ok(FrontendMessage::Execute(execute)) => assert_eq!(&execute.encode()[..], raw),
        Ok(FrontendMessage::Query(text)) => {
            let encoded = pgveil::net::frontend::encode_query(text);
            assert_eq!(
                FrontendTag::Query.decode(&encoded).ok().map(query),
                Some(text)
            );
        }
        Ok(_) | Err(_) => {}
    }
    let _ = Parse::decode(body);
}

fn query<'a>(m: FrontendMessage<'a>) -> &'a [u8] {
    match m {
        FrontendMessage::Query(text) => text,
        _ => b"",
    }
}

fn backend(raw: &[u8]) {
    let message = BackendMessage::decode(raw);
    let _ = message.ends_statement();
    match message {
        BackendMessage::Authentication(a) => {
            let _ = (a.code(), a.needs_answer());
            if let Some(rewritten) = a.without_channel_binding() {
                assert_eq!(
                    frame::frame_len(&rewritten, LIMIT),
                    Ok(Some(rewritten.len()))
                );
                let BackendMessage::Authentication(b) = BackendMessage::decode(&rewritten) else {
                    panic!("rewritten AuthenticationSASL is another message");
                };
                assert_eq!(b.code(), auth::AUTH_SASL);
                // Tag, length and code come before the mechanism list.
                let offered = auth::sasl_mechanisms(&rewritten[9..]);
                assert!(!offered.contains(&&b"SCRAM-SHA-256-PLUS"[..]));
                assert!(b.without_channel_binding().is_none());
            }
        }
        BackendMessage::RowDescription(r) => {
            if let Ok(fields) = r.fields() {
                let again = RowDescription::encode(&fields);
                let BackendMessage::RowDescription(r2) = BackendMessage::decode(&again) else {
                    panic!("re-encoded RowDescription is another message");
                };
                assert_eq!(r2.fields(), Ok(fields));
            }
        }
        BackendMessage::ParameterDescription(p) => {
            if let Ok(types) = p.types() {
                let again = ParameterDescription::encode(&types);
                let BackendMessage::ParameterDescription(p2) = BackendMessage::decode(&again)
                else {
                    panic!("re-encoded ParameterDescription is another message");
                };
                assert_eq!(p2.types(), Ok(types));
            }
        }
        BackendMessage::DataRow(d) => {
            if let Ok(values) = d.values() {
                let again = DataRow::encode(values.iter().copied());
                let BackendMessage::DataRow(d2) = BackendMessage::decode(&again) else {
                    panic!("re-encoded DataRow is another message");
                };
                assert_eq!(d2.values(), Ok(values));
            }
        }
        BackendMessage::CommandComplete(c) => {
            let _ = c.rows();
        }
        BackendMessage::ErrorResponse(e) => {
            let _ = e.is_fatal();
            if let Some(code) = e.sqlstate() {
                assert!(!code.contains(&0));
            }
            let _ = auth::error_fields(frame::body(raw));
        }
        _ => {}
    }
}

fn startup_packets(data: &[u8]) {
    // As `read_startup` calls it: a packet of the length its first word announces.
    if let Some(word) = data.get(..4) {
        let length = u32::from_be_bytes([word[0], word[1], word[2], word[3]]) as usize;
        if (8..=10_000).contains(&length) && data.len() >= length {
            let raw = Bytes::copy_from_slice(&data[..length]);
            if let Ok(startup::StartupPacket::Startup(message)) = startup::parse_startup(raw) {
                let _ = (message.user(), message.database());
            }
        }
    }
    // And on any bytes at all.
    let _ = startup::parse_startup(Bytes::copy_from_slice(data));
}

fn auth_bodies(data: &[u8]) {
    if let Ok((mechanism, first)) = auth::decode_sasl_initial(data) {
        let name = String::from_utf8_lossy(mechanism).into_owned();
        if !name.contains('\0') && name.as_bytes() == mechanism {
            let encoded = auth::encode_sasl_initial(&name, first);
            assert_eq!(&encoded[5..], data);
        }
    }
    if let Ok(password) = auth::decode_password(data) {
        assert_eq!(&auth::encode_password_message(password, true)[5..], data);
    }
    let _ = auth::sasl_mechanisms(data);
    let _ = auth::error_fields(data);
    let _ = pgveil::pgerror::sqlstate_of(data);
}
