//! The server's side of the wire: a request line in, an answer line out.
//! Requests are read by hand rather than derived, so every refusal says
//! exactly what is wrong with the line (the server answers it as
//! `{"error": ...}` and the connection carries on).

use serde::Serialize;
use serde_json::Value;

use crate::proto::Request;

/// Parse one request line (without its newline); the error names the problem.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "request is not UTF-8 text (invalid byte at offset {}): send one JSON object per line, e.g. {{\"request\":\"status\"}}",
            e.valid_up_to()
        )
    })?;
    let text = text.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(format!(
            "request contains the control character U+{:04X} (binary data?): send one JSON object per line",
            c as u32
        ));
    }
    if text.is_empty() {
        return Err(format!(
            "empty request: send one JSON object per line, e.g. {{\"request\":\"status\"}} (requests: {})",
            Request::NAMES.join(", ")
        ));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let Value::Object(mut obj) = v else {
        return Err(format!(
            "a request must be a JSON object like {{\"request\":\"status\"}}, not {}",
            json_type(&v)
        ));
    };
    let name = match obj.remove("request") {
        None => {
            return Err(format!(
                "missing \"request\" field; expected one of: {}",
                Request::NAMES.join(", ")
            ))
        }
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(format!(
                "\"request\" must be a string, not {}",
                json_type(&other)
            ))
        }
    };
    let take_uplink = |obj: &mut serde_json::Map<String, Value>| match obj.remove("uplink") {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "{name}: \"uplink\" must be a string (an uplink name), not {}",
            json_type(&other)
        )),
        None => Err(format!(
            "{name}: missing \"uplink\" (the name of the uplink)"
        )),
    };
    let req = match name.as_str() {
        "status" => Request::Status,
        "metrics" => Request::Metrics,
        "reprobe" => Request::Reprobe,
        "drain" => Request::Drain {
            uplink: take_uplink(&mut obj)?,
        },
        "undrain" => Request::Undrain {
            uplink: take_uplink(&mut obj)?,
        },
        "events" => Request::Events {
            since: match obj.remove("since") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    format!("events: \"since\" must be a sequence number (>= 0), not {v}")
                })?),
            },
        },
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(format!(
                "unknown request {shown:?}; expected one of: {}",
                Request::NAMES.join(", ")
            ));
        }
    };
    if let Some(k) = obj.keys().next() {
        let shown: String = k.chars().take(64).collect();
        return Err(format!("{name}: unexpected field {shown:?}"));
    }
    Ok(req)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An answer as its line, newline included. Encoded through a [`Value`],
/// whose object keys come out sorted: the bytes on the wire stay exactly
/// what they were when answers were built as JSON maps.
pub(super) fn encode(answer: &impl Serialize) -> String {
    let mut s = serde_json::to_value(answer)
        .map(|v| v.to_string())
        .unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Ack, ErrorReply, MetricsText, Missed, MissedKind, Response};
    use crate::status::{PerFamily, Status};
    use serde_json::json;

    fn every_request() -> Vec<(Request, &'static str)> {
        vec![
            (Request::Status, r#"{"request":"status"}"#),
            (Request::Events { since: None }, r#"{"request":"events"}"#),
            (
                Request::Events { since: Some(0) },
                r#"{"request":"events","since":0}"#,
            ),
            (
                Request::Events { since: Some(297) },
                r#"{"request":"events","since":297}"#,
            ),
            (Request::Metrics, r#"{"request":"metrics"}"#),
            (
                Request::Drain {
                    uplink: "primary".into(),
                },
                r#"{"request":"drain","uplink":"primary"}"#,
            ),
            (
                Request::Undrain {
                    uplink: "secondary".into(),
                },
                r#"{"request":"undrain","uplink":"secondary"}"#,
            ),
            (Request::Reprobe, r#"{"request":"reprobe"}"#),
        ]
    }

    #[test]
    fn typed_requests_are_the_json_clients_always_sent() {
        for (req, wire) in every_request() {
            assert_eq!(serde_json::to_string(&req).unwrap(), wire);
        }
        // What uplinkctl built by hand before the typed client.
        let name = "primary";
        assert_eq!(
            serde_json::to_string(&Request::Drain {
                uplink: name.into()
            })
            .unwrap(),
            json!({"request": "drain", "uplink": name}).to_string()
        );
        let mut req = json!({"request": "events"});
        req["since"] = json!(5);
        assert_eq!(
            serde_json::to_string(&Request::Events { since: Some(5) }).unwrap(),
            req.to_string()
        );
    }

    #[test]
    fn the_server_reads_every_typed_request_back() {
        for (req, wire) in every_request() {
            assert_eq!(parse_request(wire.as_bytes()), Ok(req.clone()), "{wire}");
            assert!(Request::NAMES.contains(&req.name()));
        }
        assert_eq!(Request::NAMES.len(), 6);
    }

    #[test]
    fn answers_are_encoded_as_they_always_were() {
        let drain = Response::Ack(Ack {
            ok: true,
            request: "drain".into(),
            uplink: Some("primary".into()),
            drained: Some(true),
            last_seq: None,
        });
        let cases = [
            (
                encode(&drain),
                json!({ "ok": true, "request": "drain", "uplink": "primary", "drained": true }),
                r#"{"drained":true,"ok":true,"request":"drain","uplink":"primary"}"#,
            ),
            (
                encode(&Response::Ack(Ack {
                    ok: true,
                    request: "reprobe".into(),
                    uplink: None,
                    drained: None,
                    last_seq: None,
                })),
                json!({ "ok": true, "request": "reprobe" }),
                r#"{"ok":true,"request":"reprobe"}"#,
            ),
            (
                encode(&Response::Ack(Ack {
                    ok: true,
                    request: "events".into(),
                    uplink: None,
                    drained: None,
                    last_seq: Some(42),
                })),
                json!({ "ok": true, "request": "events", "last_seq": 42 }),
                r#"{"last_seq":42,"ok":true,"request":"events"}"#,
            ),
            (
                encode(&Response::Error(ErrorReply {
                    error: "malformed JSON".into(),
                    refused: false,
                })),
                json!({ "error": "malformed JSON" }),
                r#"{"error":"malformed JSON"}"#,
            ),
            (
                encode(&Response::Error(ErrorReply {
                    error: "drain refused".into(),
                    refused: true,
                })),
                json!({ "error": "drain refused", "refused": true }),
                r#"{"error":"drain refused","refused":true}"#,
            ),
            (
                encode(&Response::Metrics(MetricsText {
                    metrics: "# EOF\n".into(),
                })),
                json!({ "metrics": "# EOF\n" }),
                r##"{"metrics":"# EOF\n"}"##,
            ),
            (
                encode(&Missed {
                    kind: MissedKind::Missed,
                    error: "fell behind".into(),
                    missed: 3,
                    first_seq: 5,
                    last_seq: 7,
                }),
                json!({
                    "kind": "missed",
                    "error": "fell behind",
                    "missed": 3,
                    "first_seq": 5,
                    "last_seq": 7,
                }),
                r#"{"error":"fell behind","first_seq":5,"kind":"missed","last_seq":7,"missed":3}"#,
            ),
        ];
        for (line, before, wire) in cases {
            assert_eq!(line, format!("{before}\n"));
            assert_eq!(line, format!("{wire}\n"));
        }
        let status = Status {
            active: PerFamily {
                ipv4: Some("primary".into()),
                ipv6: None,
            },
            fail_static: PerFamily::default(),
            decided: true,
            uplinks: Vec::new(),
            bonds: Vec::new(),
            competing_route: PerFamily::default(),
            fighting: PerFamily::default(),
            source: PerFamily::default(),
            mode: "enforce".into(),
            observe: None,
        };
        assert_eq!(
            encode(&Response::Status(Box::new(status.clone()))),
            format!("{}\n", serde_json::to_value(&status).unwrap())
        );
    }
}
