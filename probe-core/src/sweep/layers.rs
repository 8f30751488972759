//! Layer selections as users write them: `all`, `12`, `3,5,7`, `2..6` (end excluded),
//! `2..=6` (end included), or a comma-separated mix.

use std::collections::BTreeSet;

use crate::{Error, Result};

/// Which layers to sweep, before the model's layer count is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSelection {
    /// Every hidden state: `0..=L`.
    All,
    /// These layers (sorted, deduplicated).
    List(Vec<usize>),
}

impl std::str::FromStr for LayerSelection {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(LayerSelection::All);
        }
        let bad = |part: &str, why: &str| Error::invalid("layers", format!("{part:?} in {s:?} {why}"));
        let num = |part: &str, n: &str| n.trim().parse::<usize>().map_err(|_| bad(part, "is not a layer number"));
        let mut set = BTreeSet::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad(part, "is empty (expected e.g. `all`, `3,5`, `2..6` or `2..=6`)"));
            }
            if let Some((a, b)) = part.split_once("..=") {
                let (a, b) = (num(part, a)?, num(part, b)?);
                if a > b {
                    return Err(bad(part, "is an empty range"));
                }
                set.extend(a..=b);
            } else if let Some((a, b)) = part.split_once("..") {
                let (a, b) = (num(part, a)?, num(part, b)?);
                if a >= b {
                    return Err(bad(part, "is an empty range (the end is excluded; use a..=b to include it)"));
                }
                set.extend(a..b);
            } else {
                set.insert(num(part, part)?);
            }
        }
        Ok(LayerSelection::List(set.into_iter().collect()))
    }
}

impl std::fmt::Display for LayerSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerSelection::All => f.write_str("all"),
            LayerSelection::List(l) => {
                let parts: Vec<String> = l.iter().map(usize::to_string).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

impl LayerSelection {
    /// The concrete layers for a model with `num_layers` blocks (valid layers `0..=num_layers`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first layer out of range.
    pub fn resolve(&self, num_layers: usize) -> Result<Vec<usize>> {
        match self {
            LayerSelection::All => Ok((0..=num_layers).collect()),
            LayerSelection::List(l) => {
                if let Some(&bad) = l.iter().find(|&&x| x > num_layers) {
                    return Err(Error::invalid(
                        "layer",
                        format!(
                            "{bad} is out of range: the model has {} hidden states (layers 0..={num_layers})",
                            num_layers + 1
                        ),
                    ));
                }
                Ok(l.clone())
            }
        }
    }

    /// The block indices selected of a model of `num_blocks` blocks (`0..num_blocks`: the
    /// numbering of sites inside blocks, [`crate::Site::in_block`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming a block out of range.
    pub fn resolve_blocks(&self, num_blocks: usize) -> Result<Vec<usize>> {
        match self {
            LayerSelection::All => Ok((0..num_blocks).collect()),
            LayerSelection::List(l) => match l.iter().find(|&&x| x >= num_blocks) {
                Some(&bad) => Err(Error::invalid(
                    "layer",
                    format!("block {bad} is out of range: the model has blocks 0..{num_blocks}"),
                )),
                None => Ok(l.clone()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<LayerSelection> {
        s.parse()
    }

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(p("all").unwrap(), LayerSelection::All);
        assert_eq!(p("3").unwrap(), LayerSelection::List(vec![3]));
        assert_eq!(p("5, 3,3").unwrap(), LayerSelection::List(vec![3, 5]));
        assert_eq!(p("2..5").unwrap(), LayerSelection::List(vec![2, 3, 4]));
        assert_eq!(p("2..=5,9").unwrap(), LayerSelection::List(vec![2, 3, 4, 5, 9]));
        assert_eq!(p("all").unwrap().resolve(2).unwrap(), vec![0, 1, 2]);
    }

    #[test]
    fn errors_name_the_value() {
        assert!(p("x").unwrap_err().to_string().contains("\"x\""));
        assert!(p("5..2").unwrap_err().to_string().contains("empty range"));
        assert!(p("1,,2").unwrap_err().to_string().contains("is empty"));
        assert!(p("-1").is_err());
        let e = p("1,9").unwrap().resolve(4).unwrap_err();
        assert_eq!(e.to_string(), "invalid layer: 9 is out of range: the model has 5 hidden states (layers 0..=4)");
    }
}
