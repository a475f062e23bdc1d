//! The OS image release feed: a JSON object whose keys are versions, plus `current`.

use fetch::http::{require_success, Http, HttpError};
use reqwest::Url;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url}: bad URL: {message}")]
    BadUrl { url: String, message: String },
    #[error("{url}: expected a JSON object keyed by version")]
    NotAnObject { url: String },
}

/// The versions the feed lists, without the `current` key.
pub async fn versions(http: &Http, feed: &str) -> Result<Vec<String>, FeedError> {
    let url = Url::parse(feed).map_err(|e| FeedError::BadUrl {
        url: feed.to_owned(),
        message: e.to_string(),
    })?;
    let request = http
        .client()
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .build()
        .map_err(|e| FeedError::BadUrl {
            url: feed.to_owned(),
            message: e.to_string(),
        })?;
    let got = require_success("GET", http.fetch(request).await?)?;
    let value: serde_json::Value = got.json()?;
    let object = value.as_object().ok_or_else(|| FeedError::NotAnObject {
        url: url.to_string(),
    })?;
    Ok(object
        .keys()
        .filter(|key| key.as_str() != "current")
        .cloned()
        .collect())
}
