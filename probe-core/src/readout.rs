//! Which tokens a probe reads: the [`Readout`] of a sweep, `probe extract` and `probe apply`,
//! resolved per input into what an extractor computes ([`Positions`] and [`Span`]s).

use serde::{Deserialize, Serialize};

use crate::{Error, Positions, Result, Span};

/// The token positions whose hidden states are read, per input of prompt (+ completion).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Readout {
    /// The last token of prompt + completion.
    #[default]
    Last,
    /// The last token of the prompt (before the completion).
    LastPrompt,
    /// The mean over every token of prompt + completion.
    Mean,
    /// The mean over the completion's tokens.
    MeanCompletion,
    /// The last token of the last occurrence of this text (an input without it is an error
    /// naming it).
    Marker(String),
    /// Every token (`[n, seq, hidden]`).
    All,
}

impl Readout {
    /// What the extractor reduces to.
    pub fn positions(&self) -> Positions {
        match self {
            Readout::Last | Readout::LastPrompt | Readout::Marker(_) => Positions::Last,
            Readout::Mean | Readout::MeanCompletion => Positions::Mean,
            Readout::All => Positions::All,
        }
    }

    /// Whether every input reads all its tokens (no spans needed).
    pub fn is_whole(&self) -> bool {
        matches!(self, Readout::Last | Readout::Mean | Readout::All)
    }

    /// Whether it needs to know where the prompt ends.
    pub fn needs_prompt_length(&self) -> bool {
        matches!(self, Readout::LastPrompt | Readout::MeanCompletion)
    }

    /// The span of one input of `len` tokens whose prompt is its first `prompt_len` tokens,
    /// for the readouts that need no text ([`Readout::Marker`] goes through [`Readout::marker_prefix`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `id` when the completion is empty for `mean-completion`.
    pub fn span(&self, id: &str, len: usize, prompt_len: usize) -> Result<Span> {
        let prompt_len = prompt_len.min(len);
        match self {
            Readout::LastPrompt if prompt_len > 0 => Ok(Span::new(0, prompt_len)),
            Readout::LastPrompt => Err(Error::invalid("prompt", format!("{id:?} has no prompt tokens"))),
            Readout::MeanCompletion if prompt_len < len => Ok(Span::new(prompt_len, len)),
            Readout::MeanCompletion => {
                Err(Error::invalid("positions", format!("mean-completion: the completion of {id:?} has no tokens")))
            }
            _ => Ok(Span::new(0, len)),
        }
    }

    /// For [`Readout::Marker`]: the text up to and including the last occurrence of the
    /// marker in `text`, whose token count is the marker's last token + 1.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `id` when `text` does not contain the marker.
    pub fn marker_prefix<'t>(&self, id: &str, text: &'t str) -> Result<&'t str> {
        let Readout::Marker(marker) = self else { return Ok(text) };
        match text.rfind(marker.as_str()) {
            Some(at) => Ok(&text[..at + marker.len()]),
            None => Err(Error::invalid("marker", format!("{marker:?} does not occur in {id:?}"))),
        }
    }
}

impl std::str::FromStr for Readout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "last" => Readout::Last,
            "last-prompt" => Readout::LastPrompt,
            "mean" => Readout::Mean,
            "mean-completion" => Readout::MeanCompletion,
            "all" => Readout::All,
            other => match other.strip_prefix("marker:") {
                Some("") => return Err(Error::invalid("positions", "\"marker:\" needs a text after the colon")),
                Some(text) => Readout::Marker(text.to_owned()),
                None => {
                    return Err(Error::invalid(
                        "positions",
                        format!("{other:?} (expected last, last-prompt, mean, mean-completion, marker:TEXT or all)"),
                    ));
                }
            },
        })
    }
}

impl std::fmt::Display for Readout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Readout::Last => f.write_str("last"),
            Readout::LastPrompt => f.write_str("last-prompt"),
            Readout::Mean => f.write_str("mean"),
            Readout::MeanCompletion => f.write_str("mean-completion"),
            Readout::Marker(m) => write!(f, "marker:{m}"),
            Readout::All => f.write_str("all"),
        }
    }
}

impl From<Positions> for Readout {
    fn from(p: Positions) -> Self {
        match p {
            Positions::Last => Readout::Last,
            Positions::Mean => Readout::Mean,
            Positions::All => Readout::All,
        }
    }
}

impl TryFrom<String> for Readout {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Readout> for String {
    fn from(r: Readout) -> String {
        r.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_are_named() {
        for s in ["last", "last-prompt", "mean", "mean-completion", "marker:Answer:", "all"] {
            assert_eq!(s.parse::<Readout>().unwrap().to_string(), s);
        }
        let e = "first".parse::<Readout>().unwrap_err().to_string();
        assert!(e.contains("\"first\"") && e.contains("marker:TEXT"), "{e}");
        assert!("marker:".parse::<Readout>().is_err());
    }

    #[test]
    fn spans_follow_the_prompt_boundary() {
        assert_eq!(Readout::LastPrompt.span("a", 7, 4).unwrap(), Span::new(0, 4));
        assert_eq!(Readout::MeanCompletion.span("a", 7, 4).unwrap(), Span::new(4, 7));
        assert_eq!(Readout::Mean.span("a", 7, 4).unwrap(), Span::new(0, 7));
        let e = Readout::MeanCompletion.span("p3", 4, 4).unwrap_err().to_string();
        assert!(e.contains("\"p3\""), "{e}");
    }

    #[test]
    fn the_marker_is_its_last_occurrence() {
        let m = Readout::Marker("A:".into());
        assert_eq!(m.marker_prefix("x", "Q: 1 A: 2 A: 3").unwrap(), "Q: 1 A: 2 A:");
        let e = m.marker_prefix("p9", "no marker").unwrap_err().to_string();
        assert!(e.contains("\"A:\"") && e.contains("\"p9\""), "{e}");
    }
}
