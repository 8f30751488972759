//! Chat templates: a prompt given as `messages` is rendered with the model's own Jinja
//! template, as transformers' `apply_chat_template(messages, tokenize=False,
//! add_generation_prompt=True)` renders it, byte for byte.
//!
//! The template comes from the model folder — `chat_template.jinja` beside
//! `tokenizer_config.json` (transformers ≥ 4.43 saves it there), else `tokenizer_config.json`'s
//! `chat_template` (a string, or a list of named templates of which `default` is used) — or
//! from a file given by the user (`--chat-template FILE`). The special tokens a template reads
//! (`bos_token`, `eos_token`, `unk_token`, `pad_token`) come from `tokenizer_config.json`.
//!
//! The environment is the one transformers builds: `trim_blocks` and `lstrip_blocks` on, loop
//! controls (`break`, `continue`), Python's string and dict methods (`.strip()`,
//! `.startswith()`, `.items()` …), `raise_exception(message)`, and a `tojson` filter that
//! writes what Python's `json.dumps(value, ensure_ascii=False)` writes. `strftime_now` is
//! deliberately not defined: a rendering that depended on today's date would change the cache
//! keys daily (templates that test `strftime_now is defined` take their fixed fallback date).
//!
//! A rendering carries its own special tokens (the template writes the BOS token), so it is
//! tokenised without adding any ([`probe_core::SpecialTokens::AsWritten`]), as transformers'
//! `apply_chat_template(tokenize=True)` does: never a doubled BOS.

use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use probe_core::sweep::{ChatMessage, PromptSet};
use probe_core::{Error, Result};
use serde_json::Value as Json;

/// The special tokens transformers passes to a chat template, by their template names.
const SPECIAL_TOKENS: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

/// A model's chat template, compiled, with the special tokens it reads.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from (a file), for messages.
    origin: String,
    /// `(name, text)` of the special tokens known to the tokenizer config.
    tokens: Vec<(&'static str, String)>,
}

impl ChatTemplate {
    /// The chat template of the model folder `dir`, or `None` when it has none.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file: an unreadable or invalid
    /// `tokenizer_config.json`, a `chat_template` of the wrong type, or a template that does not
    /// compile.
    pub fn from_model_dir(dir: &Path) -> Result<Option<ChatTemplate>> {
        let config = TokenizerConfig::read(dir)?;
        let file = dir.join("chat_template.jinja");
        if file.is_file() {
            return Self::compile(read(&file)?, file.display().to_string(), config.tokens).map(Some);
        }
        match config.template {
            Some(t) => Self::compile(t, config.path.display().to_string(), config.tokens).map(Some),
            None => Ok(None),
        }
    }

    /// The template in `file` (`--chat-template FILE`), with the special tokens of the model
    /// folder `dir`'s `tokenizer_config.json` (none when it has no such file).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the file when it cannot be read or does not compile, or
    /// for an invalid `tokenizer_config.json`.
    pub fn from_file(file: &Path, dir: &Path) -> Result<ChatTemplate> {
        let config = TokenizerConfig::read(dir)?;
        Self::compile(read(file)?, file.display().to_string(), config.tokens)
    }

    /// A template from its text and the special tokens it reads (`("bos_token", "<s>")` …).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the template does not compile.
    pub fn from_parts(template: impl Into<String>, tokens: &[(&str, &str)]) -> Result<ChatTemplate> {
        let tokens = SPECIAL_TOKENS
            .iter()
            .filter_map(|&name| tokens.iter().find(|(n, _)| *n == name).map(|(_, v)| (name, (*v).to_owned())))
            .collect();
        Self::compile(template.into(), "the chat template".into(), tokens)
    }

    fn compile(source: String, origin: String, tokens: Vec<(&'static str, String)>) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source)
            .map_err(|e| Error::invalid("chat template", format!("{origin}: {}", describe(&e))))?;
        Ok(ChatTemplate { env, origin, tokens })
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The BOS token's text, when the tokenizer config names one.
    pub fn bos_token(&self) -> Option<&str> {
        self.tokens.iter().find(|(n, _)| *n == "bos_token").map(|(_, v)| v.as_str())
    }

    /// Renders `messages` with the generation prompt added (`add_generation_prompt=True`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] with the template's message (a `raise_exception` call, an
    /// undefined method …).
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        let template = self.env.get_template("chat").expect("compiled in ChatTemplate::compile");
        let mut ctx: Vec<(&str, Value)> = self.tokens.iter().map(|(n, v)| (*n, Value::from(v.as_str()))).collect();
        ctx.push(("messages", Value::from_serialize(messages)));
        ctx.push(("add_generation_prompt", Value::from(true)));
        let ctx: Value = ctx.into_iter().collect();
        template.render(ctx).map_err(|e| Error::invalid("chat template", format!("{}: {}", self.origin, describe(&e))))
    }
}

/// Renders the chat prompts of `prompts` (`messages` lines) with the chat template of the model
/// folder `model`, or with the one in `template_file` when given; a set of plain texts is
/// returned unchanged (a template file is then still checked).
///
/// # Errors
/// [`Error::InvalidInput`] naming the first chat prompt and the model folder when the folder
/// has no chat template and none was given; the errors of [`ChatTemplate`]'s constructors and
/// of [`ChatTemplate::render`] (naming the prompt).
pub fn render_prompts(prompts: PromptSet, model: &Path, template_file: Option<&Path>) -> Result<PromptSet> {
    let template = match template_file {
        Some(f) => Some(ChatTemplate::from_file(f, model)?),
        None if prompts.is_chat() => ChatTemplate::from_model_dir(model)?,
        None => None,
    };
    render_with(prompts, template.as_ref(), &model.display().to_string())
}

/// Renders the chat prompts of `prompts` with `template` (the model `model`'s); a set of plain
/// texts is returned unchanged.
///
/// # Errors
/// [`Error::InvalidInput`] (`chat_template`) naming the first chat prompt and the model when
/// there is no template; the errors of [`ChatTemplate::render`] (naming the prompt).
pub fn render_with(prompts: PromptSet, template: Option<&ChatTemplate>, model: &str) -> Result<PromptSet> {
    if !prompts.is_chat() {
        return Ok(prompts);
    }
    let Some(template) = template else {
        let id = prompts.prompts.iter().find(|p| p.messages.is_some()).map(|p| p.id.clone()).unwrap_or_default();
        return Err(Error::invalid(
            "chat_template",
            format!(
                "prompt {id:?} has messages, but the model folder {model} has no chat template (no chat_template in \
                 tokenizer_config.json, no chat_template.jinja); give one"
            ),
        ));
    };
    tracing::info!("chat prompts rendered with the template of {}", template.origin());
    prompts.render_chat(|m| template.render(m))
}

/// What a chat template needs from `tokenizer_config.json`.
struct TokenizerConfig {
    path: PathBuf,
    template: Option<String>,
    tokens: Vec<(&'static str, String)>,
}

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json`; a folder without one has no template and no tokens.
    fn read(dir: &Path) -> Result<TokenizerConfig> {
        let path = dir.join("tokenizer_config.json");
        let empty = || TokenizerConfig { path: path.clone(), template: None, tokens: Vec::new() };
        if !path.is_file() {
            return Ok(empty());
        }
        let bad = |why: String| Error::invalid("chat template", format!("{}: {why}", path.display()));
        let v: Json = serde_json::from_str(&read(&path)?).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let template = match v.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Json::as_str))
                .map(str::to_owned),
            Some(other) => return Err(bad(format!("chat_template must be a string, found {other}"))),
        };
        let tokens = SPECIAL_TOKENS
            .iter()
            .filter_map(|&name| {
                let text = match v.get(name)? {
                    Json::String(s) => s.clone(),
                    // An AddedToken written out: {"content": "<s>", "lstrip": false, …}.
                    Json::Object(o) => o.get("content")?.as_str()?.to_owned(),
                    _ => return None,
                };
                Some((name, text))
            })
            .collect();
        Ok(TokenizerConfig { template, tokens, ..empty() })
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::invalid("chat template", format!("{}: cannot be read: {e}", path.display())))
}

/// The error with its causes (a template error names the line).
fn describe(e: &minijinja::Error) -> String {
    crate::with_causes(e)
}

/// `raise_exception(message)`: the template refuses the conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `value | tojson(indent=None)`: Python's `json.dumps(value, ensure_ascii=False, indent=indent)`
/// (`", "` and `": "` between items without an indent), as transformers defines the filter.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    python_json(&value, indent, 0, &mut out)?;
    Ok(Value::from(out))
}

/// Writes `v` as Python's `json.dumps` does (keys in their order, non-ASCII kept).
fn python_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let (open, close, is_map) = match v.kind() {
        ValueKind::Undefined | ValueKind::None => {
            out.push_str("null");
            return Ok(());
        }
        ValueKind::Bool | ValueKind::Number => {
            out.push_str(&v.to_string());
            return Ok(());
        }
        ValueKind::Seq | ValueKind::Iterable => ('[', ']', false),
        ValueKind::Map => ('{', '}', true),
        _ => {
            out.push_str(&Json::String(v.to_string()).to_string());
            return Ok(());
        }
    };
    let items: Vec<Value> = v.try_iter()?.collect();
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(if indent.is_some() { "," } else { ", " });
        }
        newline(out, depth + 1);
        if is_map {
            out.push_str(&Json::String(item.to_string()).to_string());
            out.push_str(": ");
            python_json(&v.get_item(item)?, indent, depth + 1, out)?;
        } else {
            python_json(item, indent, depth + 1, out)?;
        }
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "  Hi \u{e9}  ")]
    }

    #[test]
    fn python_methods_trim_blocks_and_tokens() {
        let t = ChatTemplate::from_parts(
            "{{ bos_token }}{% for m in messages %}\n{{ m.role.upper() }}:{{ m.content | trim }}|{% endfor %}\n{% if add_generation_prompt %}A:{% endif %}",
            &[("bos_token", "<s>"), ("eos_token", "</s>")],
        )
        .unwrap();
        assert_eq!(t.render(&msgs()).unwrap(), "<s>SYSTEM:Be brief.|USER:Hi \u{e9}|A:");
        assert_eq!(t.bos_token(), Some("<s>"));
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let t = ChatTemplate::from_parts("{{ raise_exception('System role not supported') }}", &[]).unwrap();
        let e = t.render(&msgs()).unwrap_err().to_string();
        assert!(e.contains("System role not supported"), "{e}");
        let e = ChatTemplate::from_parts("{% for %}", &[]).unwrap_err().to_string();
        assert!(e.contains("chat template"), "{e}");
    }

    #[test]
    fn tojson_writes_what_python_writes() {
        let t = ChatTemplate::from_parts("{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}", &[]).unwrap();
        let m = vec![ChatMessage::new("user", "\u{e9}\"\n")];
        assert_eq!(
            t.render(&m).unwrap(),
            "[{\"role\": \"user\", \"content\": \"\u{e9}\\\"\\n\"}]|{\n  \"role\": \"user\",\n  \"content\": \"\u{e9}\\\"\\n\"\n}"
        );
    }

    #[test]
    fn model_folders_without_a_template_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::from_model_dir(dir.path()).unwrap().is_none());
        let set = PromptSet::parse(
            "p",
            "p.jsonl",
            br#"{"id":"q1","messages":[{"role":"user","content":"x"}]}"#,
            probe_core::sweep::PromptFormat::texts(),
        )
        .unwrap();
        let e = render_prompts(set.clone(), dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("\"q1\"") && e.contains(&dir.path().display().to_string()), "{e}");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token":{"content":"<s>","lstrip":false},"chat_template":[{"name":"default","template":"{{ bos_token }}{{ messages[0].content }}"}]}"#,
        )
        .unwrap();
        let r = render_prompts(set.clone(), dir.path(), None).unwrap();
        assert_eq!(r.prompts[0].text, "<s>x");
        assert_eq!(r.special_tokens, probe_core::SpecialTokens::AsWritten);
        std::fs::write(dir.path().join("chat_template.jinja"), "[{{ messages[0].content }}]").unwrap();
        assert_eq!(render_prompts(set, dir.path(), None).unwrap().prompts[0].text, "[x]", "the .jinja file wins");
    }
}
