//! Validation of job names and job ids.

/// Maximum length of a job name, in characters.
pub const JOB_NAME_MAX: usize = 64;

/// Checks that `name` can be registered as a job name.
///
/// A job name is 1 to 64 characters from `[A-Za-z0-9_-]` and is not
/// `external`, because `job.<name>.completed` must never collide with the
/// `job.external.*` event names.
///
/// # Errors
///
/// Returns a message that names the rule the name breaks.
pub fn validate_job_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("invalid job name \"\": it must have 1 to 64 characters".into());
    }
    if name.chars().count() > JOB_NAME_MAX {
        return Err(format!(
            "invalid job name {name:?}: it has {} characters, the maximum is {JOB_NAME_MAX}",
            name.chars().count()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "invalid job name {name:?}: character {bad:?} is not allowed; use letters, digits, '_' and '-'"
        ));
    }
    if name == "external" {
        return Err(
            "invalid job name \"external\": it is reserved for the job.external.* events".into(),
        );
    }
    Ok(())
}

/// Returns true when `id` is safe inside a file name such as `job_<id>.sock`.
pub fn is_safe_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_name_rules() {
        for good in ["a", "resize-image", "ml_train_2", &"x".repeat(64)] {
            assert!(validate_job_name(good).is_ok(), "{good} should be valid");
        }
        for bad in ["", "external", "has space", "dot.name", "slash/x", &"x".repeat(65), "é"] {
            assert!(validate_job_name(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn job_id_safety() {
        assert!(is_safe_job_id("0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"));
        assert!(!is_safe_job_id("../etc"));
        assert!(!is_safe_job_id(""));
        assert!(!is_safe_job_id("a b"));
    }
}
