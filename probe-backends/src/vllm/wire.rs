//! The JSON of `/v1/completions` and `/v1/models`: what is sent, what comes back, and the
//! checks that turn a response into [`Generation`]s or a clear error.

use probe_core::{Error, FinishReason, Generation, Result, SamplingParams, SpecialTokens};
use serde::{Deserialize, Serialize};

use super::BACKEND;

/// The body of `POST /v1/completions`. Every sampling field is written out, so a server's
/// defaults (or a `generation_config.json` it reads) cannot change a result.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CompletionBody<'a> {
    pub(crate) model: &'a str,
    pub(crate) prompt: &'a [String],
    pub(crate) max_tokens: u32,
    pub(crate) temperature: f32,
    pub(crate) top_p: f32,
    /// `-1` disables top-k on every vLLM version (0 is refused by older ones).
    pub(crate) top_k: i64,
    pub(crate) min_p: f32,
    pub(crate) seed: i64,
    pub(crate) n: u32,
    pub(crate) stop: &'a [String],
    pub(crate) stop_token_ids: [u32; 0],
    pub(crate) presence_penalty: f32,
    pub(crate) frequency_penalty: f32,
    pub(crate) repetition_penalty: f32,
    pub(crate) min_tokens: u32,
    pub(crate) ignore_eos: bool,
    pub(crate) skip_special_tokens: bool,
    pub(crate) include_stop_str_in_output: bool,
    pub(crate) add_special_tokens: bool,
    pub(crate) echo: bool,
    pub(crate) stream: bool,
    pub(crate) use_beam_search: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) return_token_ids: bool,
    /// Asks a server with the hidden-states connector to keep the completion's hidden states
    /// too (`{"include_output_tokens": true}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kv_transfer_params: Option<serde_json::Value>,
}

impl<'a> CompletionBody<'a> {
    /// The body for `prompts` on `model` with `s`, resolved field by field.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the seed does not fit the server's signed 64-bit seed.
    pub(crate) fn new(model: &'a str, prompts: &'a [String], s: &'a SamplingParams, token_ids: bool) -> Result<Self> {
        let seed = i64::try_from(s.seed).map_err(|_| {
            Error::invalid("seed", format!("{} (the vLLM server takes seeds up to {})", s.seed, i64::MAX))
        })?;
        Ok(Self {
            model,
            prompt: prompts,
            max_tokens: s.max_tokens,
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: if s.top_k == 0 { -1 } else { i64::from(s.top_k) },
            min_p: 0.0,
            seed,
            n: s.n,
            stop: &s.stop,
            stop_token_ids: [],
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            min_tokens: 0,
            ignore_eos: false,
            skip_special_tokens: true,
            include_stop_str_in_output: false,
            add_special_tokens: true,
            echo: false,
            stream: false,
            use_beam_search: false,
            return_token_ids: token_ids,
            kv_transfer_params: None,
        })
    }

    /// Prompts rendered with a chat template carry their special tokens: the server adds none
    /// (`add_special_tokens: false`, as vLLM's own chat endpoint does).
    pub(crate) fn special_tokens(mut self, special: SpecialTokens) -> Self {
        self.add_special_tokens = special.add();
        self
    }
}

/// The part of a completion response probe reads.
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionResponse {
    pub(crate) model: Option<String>,
    pub(crate) choices: Vec<Choice>,
}

/// One choice of a completion response.
#[derive(Debug, Deserialize)]
pub(crate) struct Choice {
    pub(crate) index: usize,
    pub(crate) text: String,
    pub(crate) finish_reason: Option<String>,
    #[serde(default)]
    pub(crate) token_ids: Option<Vec<i64>>,
    /// The prompt's token ids (vLLM ≥ 0.10 with `return_token_ids`).
    #[serde(default)]
    pub(crate) prompt_token_ids: Option<Vec<i64>>,
}

/// The `data` list of `GET /v1/models`.
#[derive(Debug, Deserialize)]
pub(crate) struct ModelList {
    pub(crate) data: Vec<ModelCard>,
}

/// One served model.
#[derive(Debug, Deserialize)]
pub(crate) struct ModelCard {
    pub(crate) id: String,
}

/// An error body: OpenAI's `{"error": {"message": ..}}`, or FastAPI's `{"detail": ..}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: Option<ErrorDetail>,
    detail: Option<serde_json::Value>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ErrorDetail {
    Object { message: String },
    Text(String),
}

/// The server's own message from an error body, or the body itself (trimmed) when it is not
/// JSON in a known shape.
pub(crate) fn error_message(body: &str) -> String {
    if let Ok(e) = serde_json::from_str::<ErrorBody>(body) {
        match (e.error, e.detail, e.message) {
            (Some(ErrorDetail::Object { message }), _, _) | (Some(ErrorDetail::Text(message)), _, _) => return message,
            (None, Some(serde_json::Value::String(s)), _) => return s,
            (None, Some(v), _) => return v.to_string(),
            (None, None, Some(m)) => return m,
            _ => {}
        }
    }
    let trimmed = body.trim();
    let cut: String = trimmed.chars().take(500).collect();
    if cut.is_empty() { "(empty body)".to_owned() } else { cut }
}

/// A malformed or inconsistent response from `server`.
pub(crate) fn bad_response(server: &str, message: impl std::fmt::Display) -> Error {
    Error::backend(BACKEND, format!("malformed response from {server}: {message}"))
}

/// Turns the answer to one batch into its generations, in (prompt, sample) order.
///
/// `first` is the index of the batch's first prompt in the whole request.
///
/// # Errors
/// A backend error naming the server for a body that is not a completion response, a
/// `model` other than `model`, a wrong number of choices, a missing, repeated or out-of-range
/// choice index, an unknown finish reason, or a token id that is not a `u32`.
pub(crate) fn parse_completions(
    server: &str,
    body: &[u8],
    model: &str,
    prompts: &[String],
    first: usize,
    n: u32,
) -> Result<Vec<Generation>> {
    let resp: CompletionResponse = serde_json::from_slice(body).map_err(|e| {
        let head: String = String::from_utf8_lossy(body).chars().take(200).collect();
        bad_response(server, format!("not a completion response ({e}): {head:?}"))
    })?;
    match resp.model.as_deref() {
        Some(m) if m == model => {}
        Some(m) => {
            return Err(Error::backend(
                BACKEND,
                format!("{server} answered with model {m:?}, but {model:?} was requested"),
            ));
        }
        None => return Err(bad_response(server, "no `model` field")),
    }
    let n = n as usize;
    let want = prompts.len() * n;
    if resp.choices.len() != want {
        return Err(bad_response(
            server,
            format!("{} choices for {} prompts × n = {n} (expected {want})", resp.choices.len(), prompts.len()),
        ));
    }
    let mut slots: Vec<Option<Generation>> = (0..want).map(|_| None).collect();
    for c in resp.choices {
        let slot = slots
            .get_mut(c.index)
            .ok_or_else(|| bad_response(server, format!("choice index {} is out of range 0..{want}", c.index)))?;
        if slot.is_some() {
            return Err(bad_response(server, format!("choice index {} appears twice", c.index)));
        }
        let finish = match c.finish_reason.as_deref() {
            Some("stop") => FinishReason::Stop,
            Some("length") => FinishReason::Length,
            other => {
                return Err(bad_response(server, format!("choice {} has finish_reason {other:?}", c.index)));
            }
        };
        let to_u32 = |ids: Option<Vec<i64>>| {
            ids.map(|ids| {
                ids.into_iter()
                    .map(|id| {
                        u32::try_from(id).map_err(|_| bad_response(server, format!("token id {id} out of range")))
                    })
                    .collect::<Result<Vec<u32>>>()
            })
            .transpose()
        };
        let (ids, prompt_ids) = (to_u32(c.token_ids)?, to_u32(c.prompt_token_ids)?);
        let (p, k) = (c.index / n, c.index % n);
        *slot = Some(
            Generation::new(first + p, k as u32, prompts[p].clone(), c.text, finish, ids)
                .with_prompt_token_ids(prompt_ids),
        );
    }
    // Every slot is filled: `want` distinct in-range indices were seen.
    Ok(slots.into_iter().flatten().collect())
}

/// Model ids listed by `GET /v1/models`.
///
/// # Errors
/// A backend error naming the server when the body is not a model list.
pub(crate) fn parse_models(server: &str, body: &[u8]) -> Result<Vec<String>> {
    let list: ModelList = serde_json::from_slice(body)
        .map_err(|e| Error::backend(BACKEND, format!("{server}/v1/models did not return a model list: {e}")))?;
    Ok(list.data.into_iter().map(|m| m.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompts() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn body_names_every_sampling_field() {
        let s = SamplingParams::greedy(5).with_stop(vec!["\n".into()]);
        let p = prompts();
        let v = serde_json::to_value(CompletionBody::new("m", &p, &s, true).unwrap()).unwrap();
        for field in [
            "model",
            "prompt",
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "seed",
            "n",
            "stop",
            "stop_token_ids",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "min_tokens",
            "ignore_eos",
            "skip_special_tokens",
            "include_stop_str_in_output",
            "return_token_ids",
        ] {
            assert!(v.get(field).is_some(), "{field} is sent");
        }
        assert_eq!(v["top_k"], -1, "top_k 0 (off) is sent as -1");
        assert_eq!(v["max_tokens"], 5);
        assert_eq!(v["stop"][0], "\n");
        let v = serde_json::to_value(CompletionBody::new("m", &p, &s, false).unwrap()).unwrap();
        assert!(v.get("return_token_ids").is_none(), "omitted when not wanted (servers that reject it)");
        assert_eq!(v["add_special_tokens"], true, "plain prompts get the tokenizer's BOS");
        let body = CompletionBody::new("m", &p, &s, true).unwrap().special_tokens(SpecialTokens::AsWritten);
        let v = serde_json::to_value(body).unwrap();
        assert_eq!(v["add_special_tokens"], false, "a rendered chat template carries its own BOS");
    }

    #[test]
    fn prompt_token_ids_are_kept() {
        let body = br#"{"model":"m","choices":[
            {"index":0,"text":"x","finish_reason":"length","token_ids":[7,8],"prompt_token_ids":[1,5]},
            {"index":1,"text":"y","finish_reason":"length","token_ids":[9]}]}"#;
        let g = parse_completions("s", body, "m", &prompts(), 0, 1).unwrap();
        assert_eq!(g[0].full_token_ids(), Some(vec![1, 5, 7, 8]));
        assert_eq!(g[1].prompt_token_ids, None, "a server without prompt ids");
        assert_eq!(g[1].full_token_ids(), None);
    }

    #[test]
    fn seed_beyond_i64_is_refused() {
        let s = SamplingParams::greedy(5).with_seed(u64::MAX);
        let p = prompts();
        let e = CompletionBody::new("m", &p, &s, true).unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }) && e.to_string().contains(&u64::MAX.to_string()), "{e}");
    }

    #[test]
    fn choices_are_ordered_by_index() {
        let body = br#"{"model":"m","choices":[
            {"index":3,"text":"d","finish_reason":"length","token_ids":[4]},
            {"index":0,"text":"a","finish_reason":"stop","token_ids":[1]},
            {"index":2,"text":"c","finish_reason":"length","token_ids":[3]},
            {"index":1,"text":"b","finish_reason":"length","token_ids":[2]}]}"#;
        let g = parse_completions("s", body, "m", &prompts(), 10, 2).unwrap();
        let got: Vec<_> = g.iter().map(|g| (g.prompt_index, g.sample_index, g.completion.as_str())).collect();
        assert_eq!(got, vec![(10, 0, "a"), (10, 1, "b"), (11, 0, "c"), (11, 1, "d")]);
        assert_eq!(g[0].finish_reason, FinishReason::Stop);
        assert_eq!(g[3].token_ids, Some(vec![4]));
        assert_eq!(g[2].prompt, "b");
    }

    #[test]
    fn bad_responses_are_errors() {
        let p = prompts();
        let cases: [(&[u8], &str); 7] = [
            (b"not json", "not a completion response"),
            (br#"{"model":"m","choices":[{"index":0,"text":"a","finish_reason":"stop"}]}"#, "1 choices for 2 prompts"),
            (br#"{"model":"x","choices":[]}"#, "answered with model \"x\""),
            (
                br#"{"model":"m","choices":[{"index":0,"text":"a","finish_reason":"stop"},{"index":0,"text":"a","finish_reason":"stop"}]}"#,
                "appears twice",
            ),
            (
                br#"{"model":"m","choices":[{"index":0,"text":"a","finish_reason":"stop"},{"index":5,"text":"a","finish_reason":"stop"}]}"#,
                "out of range",
            ),
            (
                br#"{"model":"m","choices":[{"index":0,"text":"a","finish_reason":"abort"},{"index":1,"text":"a","finish_reason":"stop"}]}"#,
                "finish_reason",
            ),
            (
                br#"{"model":"m","choices":[{"index":0,"text":"a","finish_reason":"stop","token_ids":[-1]},{"index":1,"text":"a","finish_reason":"stop"}]}"#,
                "token id -1",
            ),
        ];
        for (body, want) in cases {
            let e = parse_completions("http://s", body, "m", &p, 0, 1).unwrap_err();
            assert!(e.to_string().contains(want), "{e} should contain {want:?}");
            assert!(!e.is_retryable(), "{e} is not retryable");
        }
    }

    #[test]
    fn error_messages_are_the_servers_own() {
        assert_eq!(error_message(r#"{"error":{"message":"too long","type":"BadRequestError"}}"#), "too long");
        assert_eq!(error_message(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(error_message(r#"{"message":"nope"}"#), "nope");
        assert_eq!(error_message("plain text\n"), "plain text");
        assert_eq!(error_message(""), "(empty body)");
    }

    #[test]
    fn model_lists_parse() {
        assert_eq!(parse_models("s", br#"{"object":"list","data":[{"id":"a"},{"id":"b"}]}"#).unwrap(), ["a", "b"]);
        assert!(parse_models("s", b"[]").is_err());
    }
}
