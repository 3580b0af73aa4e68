//! Helpers for reading job specs, shared by the handler specs here and the job spec in
//! `pipelines::spec`: field-marked conversion errors and human durations.

/// Marks a conversion error with the sub-field it concerns, as `pipelines::spec` expects:
/// `@field@message`.
pub fn at(field: &str, message: impl std::fmt::Display) -> String {
    format!("@{field}@{message}")
}

/// Refuses the first present field that does not apply to `kind`.
pub fn not_for(kind: &str, fields: &[(&str, bool)]) -> Result<(), String> {
    match fields.iter().find(|(_, present)| *present) {
        Some((name, _)) => Err(at(name, format!("does not apply to kind = \"{kind}\""))),
        None => Ok(()),
    }
}

/// Durations written the way people write them: "10s", "500ms", "5m", "4w".
pub mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse::<D::Error>(&text)
    }

    fn parse<E: serde::de::Error>(text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text).map_err(|e| {
            E::custom(format!("expected a duration like \"10s\", \"500ms\" or \"5m\", got {text:?} ({e})"))
        })
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer};

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = Option::<String>::deserialize(d)?;
            text.map(|t| super::parse::<D::Error>(&t)).transpose()
        }
    }
}
