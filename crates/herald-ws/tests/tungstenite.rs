//! Interop with tungstenite as the client: its handshake and frames against ours, both ways.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use herald_ws::{
    FrameReader, Inbound, Limits, OpCode, ReadError, check_upgrade, encode_close, encode_frame,
    encode_frame_parts, encode_ping, offers_protocol,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{
    CloseCode, Data, OpCode as WsOpCode,
};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};

const DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than `DEADLINE`.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// The server half of the opening handshake, written against our `check_upgrade`:
/// reads the request head, answers 101 with the accept key, and leaves any bytes that came
/// after the head in the reader's buffer.
async fn accept(io: &mut DuplexStream, reader: &mut FrameReader) -> HeaderMap {
    let mut head = Vec::new();
    let end = loop {
        let mut chunk = [0_u8; 512];
        let n = io.read(&mut chunk).await.expect("read request");
        assert!(n > 0, "client hung up during the handshake");
        head.extend_from_slice(&chunk[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    reader.buffer_mut().extend_from_slice(&head[end..]);
    let text = std::str::from_utf8(&head[..end]).expect("ASCII request head");
    let mut lines = text.split("\r\n");
    let request_line = lines.next().expect("request line");
    assert!(
        request_line.starts_with("GET /message/42/stream/ HTTP/1.1"),
        "{request_line}"
    );
    let mut headers = HeaderMap::new();
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = line.split_once(':').expect("header line");
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).expect("header name"),
            HeaderValue::from_str(value.trim()).expect("header value"),
        );
    }
    let accept = check_upgrade(&headers).expect("tungstenite sends a valid upgrade");
    let protocol = if offers_protocol(&headers, "herald.v1") {
        "Sec-WebSocket-Protocol: herald.v1\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    );
    io.write_all(response.as_bytes())
        .await
        .expect("write response");
    headers
}

/// A connected pair: a tungstenite client and our side of the same in-memory pipe.
async fn connect(limits: Limits) -> (WebSocketStream<DuplexStream>, DuplexStream, FrameReader) {
    let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
    let mut reader = FrameReader::new(limits);
    let mut request = "ws://localhost/message/42/stream/"
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("chat, herald.v1"),
    );
    let (client, headers) = within("handshake", async {
        tokio::join!(
            tokio_tungstenite::client_async(request, client_io),
            accept(&mut server_io, &mut reader)
        )
    })
    .await;
    // tungstenite checks our Sec-WebSocket-Accept and the protocol we chose.
    let (client, response) = client.expect("tungstenite accepts our handshake");
    assert_eq!(response.status(), 101);
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(HeaderValue::as_bytes),
        Some(&b"herald.v1"[..])
    );
    assert!(headers.contains_key("sec-websocket-key"));
    (client, server_io, reader)
}

async fn next_inbound(reader: &mut FrameReader, io: &mut DuplexStream) -> Inbound {
    match within("server read", reader.read(io)).await {
        Ok(Some(item)) => item,
        other => panic!("expected a frame, got {other:?}"),
    }
}

async fn next_message(client: &mut WebSocketStream<DuplexStream>) -> Message {
    match within("client read", client.next()).await {
        Some(Ok(message)) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn reader_decodes_what_tungstenite_sends() {
    let limits = Limits {
        max_frame: 200_000,
        max_message: 200_000,
    };
    let (mut client, mut server, mut reader) = connect(limits).await;

    let large: Vec<u8> = (0..100_000_u32).map(|i| (i % 251) as u8).collect();
    let medium = vec![0x42; 40_000];
    let fragment = |data: &'static str, opcode: Data, fin: bool| {
        Message::Frame(Frame::message(
            Bytes::from_static(data.as_bytes()),
            WsOpCode::Data(opcode),
            fin,
        ))
    };
    let sends = [
        Message::text("hello ünïcode ✓"),
        Message::binary(vec![0, 1, 2, 255]),
        Message::binary(medium.clone()),
        Message::binary(large.clone()),
        fragment("frag", Data::Text, false),
        Message::Ping(Bytes::from_static(b"hb")),
        fragment("ment", Data::Continue, false),
        Message::Pong(Bytes::from_static(b"unsolicited")),
        fragment("éd", Data::Continue, true),
        Message::text(""),
    ];
    for message in sends {
        within("client send", client.send(message))
            .await
            .expect("send");
    }

    let expected = [
        Inbound::Text(Bytes::from("hello ünïcode ✓")),
        Inbound::Binary(Bytes::from_static(&[0, 1, 2, 255])),
        Inbound::Binary(Bytes::from(medium)),
        Inbound::Binary(Bytes::from(large)),
        Inbound::Ping(Bytes::from_static(b"hb")),
        Inbound::Pong(Bytes::from_static(b"unsolicited")),
        Inbound::Text(Bytes::from("fragmentéd")),
        Inbound::Text(Bytes::new()),
    ];
    for want in expected {
        assert_eq!(next_inbound(&mut reader, &mut server).await, want);
    }

    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    within("client close", client.close(Some(bye)))
        .await
        .expect("close");
    assert_eq!(
        next_inbound(&mut reader, &mut server).await,
        Inbound::Close {
            code: Some(1000),
            reason: "bye".into()
        }
    );
    // Finish the closing handshake and hang up: the reader sees a clean end.
    within("server close", server.write_all(&encode_close(1000, "")))
        .await
        .expect("write");
    within("server shutdown", server.shutdown())
        .await
        .expect("shutdown");
    let client_done = async { while let Some(Ok(_)) = client.next().await {} };
    within("client drains", client_done).await;
    drop(client);
    assert!(matches!(
        within("eof", reader.read(&mut server)).await,
        Ok(None)
    ));
}

#[tokio::test]
async fn reader_refuses_an_oversized_tungstenite_message_with_1009() {
    let (mut client, mut server, mut reader) = connect(Limits::default()).await;
    let too_big = vec![7_u8; Limits::DEFAULT_SIZE + 1];
    within("client send", client.send(Message::binary(too_big)))
        .await
        .expect("send");
    match within("server read", reader.read(&mut server)).await {
        Err(ReadError::Protocol(err)) => assert_eq!(err.code, 1009),
        other => panic!("expected 1009, got {other:?}"),
    }
    // We close with the code the reader gave; tungstenite sees it.
    within(
        "server close",
        server.write_all(&encode_close(1009, "frame too big")),
    )
    .await
    .expect("write");
    match next_message(&mut client).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1009);
            assert_eq!(frame.reason.as_str(), "frame too big");
        }
        other => panic!("expected close, got {other:?}"),
    }
}

#[tokio::test]
async fn tungstenite_decodes_what_we_encode() {
    let (mut client, mut server, mut reader) = connect(Limits::default()).await;

    let large: Vec<u8> = (0..70_000_u32).map(|i| (i % 253) as u8).collect();
    let header = br#"{"t":"m","s":"user.42","o":18}"#;
    let payload = br#"{"notification":"hi"}"#;
    let frames = [
        encode_frame(OpCode::Text, "über".as_bytes()),
        encode_frame(OpCode::Binary, &[9, 8, 7]),
        encode_frame_parts(OpCode::Text, &[header, b"\n", payload]),
        encode_frame(OpCode::Binary, &large),
        encode_frame(OpCode::Text, &[b'm'; 300]),
        encode_ping(b"are you there"),
    ];
    for frame in &frames {
        within("server write", server.write_all(frame))
            .await
            .expect("write");
    }

    assert_eq!(next_message(&mut client).await, Message::text("über"));
    assert_eq!(
        next_message(&mut client).await,
        Message::binary(vec![9, 8, 7])
    );
    let joined = format!(
        "{}\n{}",
        std::str::from_utf8(header).expect("ascii"),
        std::str::from_utf8(payload).expect("ascii")
    );
    assert_eq!(next_message(&mut client).await, Message::text(joined));
    assert_eq!(next_message(&mut client).await, Message::binary(large));
    assert_eq!(
        next_message(&mut client).await,
        Message::text("m".repeat(300))
    );
    assert_eq!(
        next_message(&mut client).await,
        Message::Ping(Bytes::from_static(b"are you there"))
    );

    within(
        "server write",
        server.write_all(&encode_close(4001, "slow consumer")),
    )
    .await
    .expect("write");
    // tungstenite flushes its automatic pong before reading on.
    match next_message(&mut client).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "slow consumer");
        }
        other => panic!("expected close, got {other:?}"),
    }
    assert_eq!(
        next_inbound(&mut reader, &mut server).await,
        Inbound::Pong(Bytes::from_static(b"are you there"))
    );

    // Let the client echo the close while we read it, then hang up so it stops waiting.
    let client_done = async { while let Some(Ok(_)) = client.next().await {} };
    let server_done = async {
        let echoed = next_inbound(&mut reader, &mut server).await;
        drop(server);
        echoed
    };
    let ((), echoed) = within("close handshake", async {
        tokio::join!(client_done, server_done)
    })
    .await;
    assert_eq!(
        echoed,
        Inbound::Close {
            code: Some(4001),
            reason: "slow consumer".into()
        }
    );
}
