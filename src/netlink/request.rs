//! Request/answer plumbing over an rtnetlink [`Handle`], with a timeout on
//! every request and kernel errors turned into [`NetlinkError`]s.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

use super::NetlinkError;

type AnswerStream = Pin<Box<dyn Stream<Item = NetlinkMessage<RouteNetlinkMessage>> + Send>>;

fn send(
    handle: &Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
    op: &str,
) -> Result<AnswerStream, NetlinkError> {
    let mut req = NetlinkMessage::from(msg);
    req.header.flags = flags;
    let mut handle = handle.clone();
    match handle.request(req) {
        Ok(s) => Ok(Box::pin(s)),
        Err(_) => Err(NetlinkError::Closed { op: op.to_string() }),
    }
}

/// Send a request with NLM_F_ACK (plus `extra_flags`) and wait for the ack.
pub(crate) async fn ack(
    handle: &Handle,
    msg: RouteNetlinkMessage,
    extra_flags: u16,
    timeout: Duration,
    op: &str,
) -> Result<(), NetlinkError> {
    let mut answers = send(handle, msg, NLM_F_REQUEST | NLM_F_ACK | extra_flags, op)?;
    let wait = async {
        // The stream ends once the ack (or an error) has been delivered.
        while let Some(m) = answers.next().await {
            if let NetlinkPayload::Error(e) = &m.payload {
                if e.code.is_some() {
                    return Err(NetlinkError::kernel(op, e, m.header.flags));
                }
                return Ok(());
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => Err(NetlinkError::Timeout {
            op: op.to_string(),
            timeout,
        }),
    }
}

/// A single-object GET (no NLM_F_DUMP): the answer, or the kernel's error.
pub(crate) async fn get_one(
    handle: &Handle,
    msg: RouteNetlinkMessage,
    timeout: Duration,
    op: &str,
) -> Result<RouteNetlinkMessage, NetlinkError> {
    let mut answers = send(handle, msg, NLM_F_REQUEST, op)?;
    let wait = async {
        while let Some(m) = answers.next().await {
            let flags = m.header.flags;
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => return Ok(inner),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(NetlinkError::kernel(op, &e, flags))
                }
                _ => {}
            }
        }
        Err(NetlinkError::Unexpected {
            op: op.to_string(),
            detail: "no answer message".into(),
        })
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(r) => r,
        Err(_) => Err(NetlinkError::Timeout {
            op: op.to_string(),
            timeout,
        }),
    }
}

/// A dump in progress. `timeout` bounds the wait for each part of the answer
/// (not the whole dump, so a huge table never trips it while a wedged
/// socket always does).
pub(crate) struct Dump {
    answers: AnswerStream,
    timeout: Duration,
    op: String,
    /// NLM_F_DUMP_INTR was seen: the kernel's table changed during the dump,
    /// so it may be inconsistent (entries missed or repeated).
    pub interrupted: bool,
}

impl Dump {
    pub(crate) fn start(
        handle: &Handle,
        msg: RouteNetlinkMessage,
        timeout: Duration,
        op: impl Into<String>,
    ) -> Result<Self, NetlinkError> {
        let op = op.into();
        let answers = send(handle, msg, NLM_F_REQUEST | NLM_F_DUMP, &op)?;
        Ok(Dump {
            answers,
            timeout,
            op,
            interrupted: false,
        })
    }

    /// The next object, or `None` at the end of the dump.
    pub(crate) async fn next(&mut self) -> Result<Option<RouteNetlinkMessage>, NetlinkError> {
        loop {
            let m = match tokio::time::timeout(self.timeout, self.answers.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(None),
                Err(_) => {
                    return Err(NetlinkError::Timeout {
                        op: self.op.clone(),
                        timeout: self.timeout,
                    })
                }
            };
            if m.header.flags & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            let flags = m.header.flags;
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => return Ok(Some(inner)),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(NetlinkError::kernel(self.op.clone(), &e, flags))
                }
                NetlinkPayload::Overrun(_) => {
                    // Our request socket's buffer overflowed mid-dump: the
                    // answer is incomplete.
                    return Err(NetlinkError::Unexpected {
                        op: self.op.clone(),
                        detail: "receive buffer overrun during dump".into(),
                    });
                }
                _ => {}
            }
        }
    }

    /// Collect the whole dump.
    pub(crate) async fn collect(mut self) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut out = Vec::new();
        while let Some(m) = self.next().await? {
            out.push(m);
        }
        Ok(out)
    }
}
