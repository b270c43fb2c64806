//! Event name patterns: exact names, or `*` wildcards that match any run of
//! characters, dots included.

/// A compiled event name pattern.
///
/// A pattern without `*` matches only the identical name. Each `*` matches
/// any run of characters, including an empty one and one that contains dots,
/// so `job.*.completed` matches `job.resize-image.completed` and
/// `job.a.b.completed`, `job.*` matches `job.a.b`, and `*` matches every name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Exact,
    /// The literal text around the wildcards: `prefix*middle[0]*...*suffix`.
    Wildcard {
        prefix: String,
        middle: Vec<String>,
        suffix: String,
    },
}

impl Pattern {
    /// Compiles `pattern` so that matching needs no further parsing.
    pub fn new(pattern: &str) -> Self {
        let mut literals: Vec<&str> = pattern.split('*').collect();
        let kind = if literals.len() == 1 {
            Kind::Exact
        } else {
            // `split` yields one more literal than there are wildcards, so
            // there are at least two here: the prefix and the suffix.
            let suffix = literals.pop().unwrap_or_default().to_owned();
            let prefix = literals.remove(0).to_owned();
            let middle = literals
                .into_iter()
                .filter(|literal| !literal.is_empty())
                .map(str::to_owned)
                .collect();
            Kind::Wildcard {
                prefix,
                middle,
                suffix,
            }
        };

        Self {
            source: pattern.to_owned(),
            kind,
        }
    }

    /// Returns the pattern text this was compiled from.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Returns `true` when `name` matches this pattern.
    pub fn matches(&self, name: &str) -> bool {
        match &self.kind {
            Kind::Exact => name == self.source,
            Kind::Wildcard {
                prefix,
                middle,
                suffix,
            } => {
                // Strip the suffix from what follows the prefix, so that the
                // two never share characters ("a*a" must not match "a").
                let Some(rest) = name.strip_prefix(prefix.as_str()) else {
                    return false;
                };
                let Some(mut rest) = rest.strip_suffix(suffix.as_str()) else {
                    return false;
                };

                // With `*` as the only wildcard, taking the leftmost
                // occurrence of each literal leaves the most room for the
                // literals after it, so no backtracking is needed.
                for literal in middle {
                    match rest.find(literal.as_str()) {
                        Some(start) => rest = &rest[start + literal.len()..],
                        None => return false,
                    }
                }
                true
            }
        }
    }
}

/// Returns `true` when the event name `name` matches `pattern`.
///
/// This compiles the pattern on every call, so a caller that matches one
/// pattern against many names should keep a [`Pattern`] instead.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    Pattern::new(pattern).matches(name)
}
