//! The control messages a client sends on an open connection (SUBSCRIBE,
//! UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY, GET_PROPERTY), answered
//! by a pure function with spot's reply and error shapes.

use serde_json::Value;

use crate::config::Market;
use crate::streams::StreamName;

/// Result of one control message.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ControlOutcome {
    pub reply: String,
    pub new_streams: Option<Vec<String>>,
    pub new_combined: Option<bool>,
    pub too_many_streams: bool,
    pub is_error: bool,
}

fn bare_error(code: i64, message: &str) -> ControlOutcome {
    ControlOutcome {
        reply: serde_json::json!({"code": code, "msg": message}).to_string(),
        is_error: true,
        ..ControlOutcome::default()
    }
}

/// Processes one SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY
/// message against the connection's current streams (pure, for unit tests);
/// a stream `market` does not have is an invalid stream.
pub(crate) fn process_control(
    text: &str,
    current: &[String],
    combined: bool,
    max_streams: usize,
    market: Market,
) -> ControlOutcome {
    let request: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(error) => return bare_error(3, &format!("Invalid JSON: {error}")),
    };
    let Some(object) = request.as_object() else {
        return bare_error(2, "Invalid request: invalid type: expected struct Request");
    };
    let method = match object.get("method") {
        None => return bare_error(2, "Invalid request: missing field `method`"),
        Some(Value::String(method)) => method.as_str(),
        Some(other) => {
            return bare_error(
                2,
                &format!("Invalid request: invalid type: {other}, expected a method name"),
            );
        }
    };
    const METHODS: [&str; 5] = [
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "LIST_SUBSCRIPTIONS",
        "SET_PROPERTY",
        "GET_PROPERTY",
    ];
    if !METHODS.contains(&method) {
        return bare_error(
            2,
            &format!(
                "Invalid request: unknown variant `{method}`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"
            ),
        );
    }
    let id = match object.get("id") {
        Some(id) if is_valid_request_id(id) => id.clone(),
        _ => return bare_error(2, "Invalid request: request ID must be an unsigned integer"),
    };
    let params = object.get("params");
    let ok_reply = |result: Value| serde_json::json!({"result": result, "id": id}).to_string();
    let invalid_stream = || {
        ControlOutcome {
        reply: serde_json::json!({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": id}).to_string(),
        is_error: true,
        ..ControlOutcome::default()
    }
    };
    match method {
        "SUBSCRIBE" | "UNSUBSCRIBE" => {
            let Some(Value::Array(names)) = params else {
                return invalid_stream();
            };
            let mut names_text = Vec::with_capacity(names.len());
            for name in names {
                match name.as_str() {
                    Some(name) if StreamName::parse_on(name, market).is_some() => {
                        names_text.push(name.to_owned())
                    }
                    _ => return invalid_stream(),
                }
            }
            let mut streams = current.to_vec();
            if method == "SUBSCRIBE" {
                for name in names_text {
                    if !streams.contains(&name) {
                        streams.push(name);
                    }
                }
                if streams.len() > max_streams {
                    return ControlOutcome {
                        too_many_streams: true,
                        ..ControlOutcome::default()
                    };
                }
            } else {
                streams.retain(|stream| !names_text.contains(stream));
            }
            ControlOutcome {
                reply: ok_reply(Value::Null),
                new_streams: Some(streams),
                ..ControlOutcome::default()
            }
        }
        "LIST_SUBSCRIPTIONS" => ControlOutcome {
            reply: ok_reply(Value::from(current.to_vec())),
            ..ControlOutcome::default()
        },
        "SET_PROPERTY" | "GET_PROPERTY" => {
            let empty = Vec::new();
            let params = match params {
                Some(Value::Array(params)) => params,
                None => &empty,
                Some(_) => return bare_error(2, "Invalid request: property name must be a string"),
            };
            let expected_count = if method == "SET_PROPERTY" { 2 } else { 1 };
            if params.len() > expected_count {
                return bare_error(2, "Invalid request: too many parameters");
            }
            let Some(Value::String(property)) = params.first() else {
                return bare_error(2, "Invalid request: property name must be a string");
            };
            if property != "combined" {
                return ControlOutcome {
                    reply: serde_json::json!({"code": 0, "msg": "Unknown property", "id": id})
                        .to_string(),
                    is_error: true,
                    ..ControlOutcome::default()
                };
            }
            if method == "GET_PROPERTY" {
                return ControlOutcome {
                    reply: ok_reply(Value::Bool(combined)),
                    ..ControlOutcome::default()
                };
            }
            match params.get(1) {
                Some(Value::Bool(value)) => ControlOutcome {
                    reply: ok_reply(Value::Null),
                    new_combined: Some(*value),
                    ..ControlOutcome::default()
                },
                _ => bare_error(1, "Invalid value type: expected Boolean"),
            }
        }
        _ => unreachable!("method checked against METHODS above"),
    }
}

/// Spot accepts a signed 64-bit integer, an alphanumeric string of up to 36 characters, or null.
fn is_valid_request_id(id: &Value) -> bool {
    match id {
        Value::Null => true,
        Value::Number(number) => number.is_i64(),
        Value::String(text) => {
            text.len() <= 36 && text.bytes().all(|byte| byte.is_ascii_alphanumeric())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn subscribe_list_unsubscribe() {
        let outcome = process_control(
            r#"{"method":"SUBSCRIBE","params":["btcusdt@aggTrade","btcusdt@depth"],"id":1}"#,
            &[],
            false,
            10,
            Market::Spot,
        );
        let reply: Value = serde_json::from_str(&outcome.reply).unwrap();
        assert_eq!(reply, serde_json::json!({"result": null, "id": 1}));
        let current = outcome.new_streams.unwrap();
        assert_eq!(current, streams(&["btcusdt@aggTrade", "btcusdt@depth"]));
        let outcome = process_control(
            r#"{"method":"UNSUBSCRIBE","params":["btcusdt@depth"],"id":312}"#,
            &current,
            false,
            10,
            Market::Spot,
        );
        let current = outcome.new_streams.unwrap();
        assert_eq!(current, streams(&["btcusdt@aggTrade"]));
        let outcome = process_control(
            r#"{"method":"LIST_SUBSCRIPTIONS","id":3}"#,
            &current,
            false,
            10,
            Market::Spot,
        );
        let reply: Value = serde_json::from_str(&outcome.reply).unwrap();
        assert_eq!(
            reply,
            serde_json::json!({"result": ["btcusdt@aggTrade"], "id": 3})
        );
    }

    #[test]
    fn properties() {
        let outcome = process_control(
            r#"{"method":"SET_PROPERTY","params":["combined",true],"id":5}"#,
            &[],
            false,
            10,
            Market::Spot,
        );
        assert_eq!(outcome.new_combined, Some(true));
        let outcome = process_control(
            r#"{"method":"GET_PROPERTY","params":["combined"],"id":2}"#,
            &[],
            true,
            10,
            Market::Spot,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap(),
            serde_json::json!({"result": true, "id": 2})
        );
        let outcome = process_control(
            r#"{"method":"SET_PROPERTY","params":["colour",true],"id":7}"#,
            &[],
            false,
            10,
            Market::Spot,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap(),
            serde_json::json!({"code": 0, "msg": "Unknown property", "id": 7})
        );
        let outcome = process_control(
            r#"{"method":"SET_PROPERTY","params":["combined","yes"],"id":7}"#,
            &[],
            false,
            10,
            Market::Spot,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap()["code"],
            1
        );
        let outcome = process_control(
            r#"{"method":"SET_PROPERTY","params":[5,true],"id":7}"#,
            &[],
            false,
            10,
            Market::Spot,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap(),
            serde_json::json!({"code": 2, "msg": "Invalid request: property name must be a string"})
        );
        let outcome = process_control(
            r#"{"method":"SET_PROPERTY","params":["combined",true,1],"id":7}"#,
            &[],
            false,
            10,
            Market::Spot,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap()["msg"],
            "Invalid request: too many parameters"
        );
    }

    /// `@kline_1s` is no futures stream (reference 4.4): SUBSCRIBE refuses
    /// it as any bad stream name, subscribing nothing of the request.
    #[test]
    fn one_second_klines_are_an_invalid_stream_on_futures() {
        let request =
            r#"{"method":"SUBSCRIBE","params":["btcusdt@kline_1m","btcusdt@kline_1s"],"id":4}"#;
        for market in [Market::UsdM, Market::CoinM] {
            let outcome = process_control(request, &[], true, 10, market);
            assert_eq!(
                serde_json::from_str::<Value>(&outcome.reply).unwrap(),
                serde_json::json!({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 4}),
                "{market:?}"
            );
            assert!(outcome.new_streams.is_none(), "{market:?}");
        }
        for market in [Market::Spot, Market::Us] {
            let outcome = process_control(request, &[], true, 10, market);
            assert_eq!(
                outcome.new_streams,
                Some(streams(&["btcusdt@kline_1m", "btcusdt@kline_1s"])),
                "{market:?}"
            );
        }
    }

    #[test]
    fn error_shapes() {
        let outcome = process_control(
            r#"{"method":"SUBSCRIBE","params":["btcusdt@nonsense"],"id":2}"#,
            &[],
            false,
            10,
            Market::Spot,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap(),
            serde_json::json!({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 2})
        );
        assert!(outcome.new_streams.is_none());
        let outcome = process_control("not json", &[], false, 10, Market::Spot);
        let reply: Value = serde_json::from_str(&outcome.reply).unwrap();
        assert_eq!(reply["code"], 3);
        assert!(
            reply["msg"]
                .as_str()
                .unwrap()
                .starts_with("Invalid JSON: expected"),
            "{reply}"
        );
        let outcome = process_control(
            r#"{"method":"PUBLISH","id":1}"#,
            &[],
            false,
            10,
            Market::Spot,
        );
        let reply: Value = serde_json::from_str(&outcome.reply).unwrap();
        assert_eq!(reply["code"], 2);
        assert!(reply["msg"]
            .as_str()
            .unwrap()
            .starts_with("Invalid request: unknown variant"));
        let outcome = process_control(r#"{"params":[],"id":1}"#, &[], false, 10, Market::Spot);
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap()["msg"],
            "Invalid request: missing field `method`"
        );
        let outcome = process_control(
            r#"{"method":"LIST_SUBSCRIPTIONS","id":{"a":1}}"#,
            &[],
            false,
            10,
            Market::Spot,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&outcome.reply).unwrap()["msg"],
            "Invalid request: request ID must be an unsigned integer"
        );
        // Ids spot accepts: signed integers, short alphanumeric strings, null.
        for id in ["-5", r#""abc123""#, "null"] {
            let outcome = process_control(
                &format!(r#"{{"method":"LIST_SUBSCRIPTIONS","id":{id}}}"#),
                &[],
                false,
                10,
                Market::Spot,
            );
            assert!(!outcome.is_error, "{id}");
        }
    }

    #[test]
    fn too_many_streams() {
        let outcome = process_control(
            r#"{"method":"SUBSCRIBE","params":["a@trade","b@trade","c@trade"],"id":1}"#,
            &[],
            false,
            2,
            Market::Spot,
        );
        assert!(outcome.too_many_streams);
    }
}
