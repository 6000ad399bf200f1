//! A read endpoint's query filters: the names it knows, their values
//! checked, turned into SQL conditions whose text comes only from this
//! module's constants and whose values are bound (a filter value is
//! never SQL, whatever it holds).
use spyglass_proto::model::Severity;

/// Checks a filter's value; the error says why it is refused.
pub type Check = fn(&str) -> Result<(), String>;

/// One filter an endpoint accepts.
#[derive(Clone, Copy, Debug)]
pub enum Filter {
    /// `NAME=true|false`: one condition for each.
    Flag {
        name: &'static str,
        yes: &'static str,
        no: &'static str,
    },
    /// `NAME=VALUE`: each `?` in `sql` is bound to the value, after
    /// `check` (when given) accepts it.
    Text {
        name: &'static str,
        sql: &'static str,
        check: Option<Check>,
    },
}

impl Filter {
    fn name(&self) -> &'static str {
        match self {
            Filter::Flag { name, .. } | Filter::Text { name, .. } => name,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown filter {name:?}; this endpoint takes: {known}")]
    Unknown { name: String, known: String },
    #[error("filter {name}: {value:?} is not true or false")]
    NotFlag { name: &'static str, value: String },
    #[error("filter {name}: {why}")]
    Bad { name: &'static str, why: String },
    #[error("filter {name} is given twice; give it once")]
    Twice { name: &'static str },
}

/// The conditions (joined with AND) and their bound values, in the order
/// of their `$n` placeholders, numbered from `first`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    pub sql: Vec<String>,
    pub binds: Vec<String>,
}

/// Longest filter value accepted.
const MAX_VALUE: usize = 1024;

/// Check `pairs` (the query string) against `allowed`.
pub fn conditions(
    allowed: &[Filter],
    pairs: &[(String, String)],
    first: usize,
) -> Result<Conditions, FilterError> {
    let mut out = Conditions::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for (name, value) in pairs {
        let Some(f) = allowed.iter().find(|f| f.name() == name) else {
            let known: Vec<_> = allowed.iter().map(Filter::name).collect();
            return Err(FilterError::Unknown {
                name: name.chars().take(64).collect(),
                known: if known.is_empty() {
                    "no filters".into()
                } else {
                    known.join(", ")
                },
            });
        };
        if seen.contains(&f.name()) {
            return Err(FilterError::Twice { name: f.name() });
        }
        seen.push(f.name());
        match *f {
            Filter::Flag { name, yes, no } => out.sql.push(
                match value.as_str() {
                    "true" => yes,
                    "false" => no,
                    _ => {
                        return Err(FilterError::NotFlag {
                            name,
                            value: value.chars().take(64).collect(),
                        })
                    }
                }
                .to_owned(),
            ),
            Filter::Text { name, sql, check } => {
                if value.is_empty() || value.len() > MAX_VALUE {
                    return Err(FilterError::Bad {
                        name,
                        why: format!("give a value of 1 to {MAX_VALUE} bytes"),
                    });
                }
                if let Some(check) = check {
                    check(value).map_err(|why| FilterError::Bad { name, why })?;
                }
                let mut text = String::with_capacity(sql.len() + 8);
                for (i, part) in sql.split('?').enumerate() {
                    if i > 0 {
                        text.push_str(&format!("${}", first + out.binds.len()));
                        out.binds.push(value.clone());
                    }
                    text.push_str(part);
                }
                out.sql.push(text);
            }
        }
    }
    Ok(out)
}

/// `severity=`: one of the severity words.
pub fn severity(v: &str) -> Result<(), String> {
    Severity::parse(v)
        .map(|_| ())
        .ok_or_else(|| format!("{v:?} is not one of {}", Severity::WORDS.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: &[Filter] = &[
        Filter::Flag {
            name: "root",
            yes: "c.uid = 0",
            no: "c.uid <> 0",
        },
        Filter::Text {
            name: "namespace",
            sql: "(c.namespace = ? OR c.pod_namespace = ?)",
            check: None,
        },
        Filter::Text {
            name: "severity",
            sql: "f.severity = ?",
            check: Some(severity),
        },
    ];

    fn q(pairs: &[(&str, &str)]) -> Result<Conditions, FilterError> {
        let p: Vec<_> = pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        conditions(F, &p, 1)
    }

    #[test]
    fn values_are_bound_never_spliced() {
        let evil = "x' OR '1'='1";
        let c = q(&[("root", "true"), ("namespace", evil)]).unwrap();
        assert_eq!(
            c.sql,
            ["c.uid = 0", "(c.namespace = $1 OR c.pod_namespace = $2)"]
        );
        assert_eq!(c.binds, [evil, evil]);
    }

    #[test]
    fn unknown_names_and_bad_values_are_refused_by_name() {
        assert_eq!(
            q(&[("rooot", "true")]).unwrap_err().to_string(),
            "unknown filter \"rooot\"; this endpoint takes: root, namespace, severity"
        );
        assert_eq!(
            q(&[("root", "yes")]).unwrap_err().to_string(),
            "filter root: \"yes\" is not true or false"
        );
        let e = q(&[("severity", "urgent")]).unwrap_err().to_string();
        assert!(
            e.starts_with("filter severity: \"urgent\" is not one of info,"),
            "{e}"
        );
        assert_eq!(
            q(&[("root", "true"), ("root", "false")]).unwrap_err(),
            FilterError::Twice { name: "root" }
        );
        assert!(matches!(
            q(&[("namespace", "")]),
            Err(FilterError::Bad {
                name: "namespace",
                ..
            })
        ));
    }

    #[test]
    fn no_filters_no_conditions() {
        assert_eq!(q(&[]).unwrap(), Conditions::default());
        assert!(q(&[("severity", "high")]).is_ok());
    }
}
