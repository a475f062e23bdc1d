//! The webhook notifier: Slack-compatible incoming-webhook messages about updates.
//!
//! A message is one attachment with a title, a text, a colour and the fields Version, Servers,
//! Started at and (for failures) Reason. The HTTP status is checked; a failed post is retried
//! briefly and then logged. Notifying never changes the update state: callers ignore the result
//! beyond logging it.

use crate::types::UpdateRequest;
use fetch::http::{require_success, Http, HttpError, RetryPolicy};
use serde::Serialize;
use std::time::Duration;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An update (or a reconfiguration) was requested.
    Begin { detail: String },
    /// Every server completed.
    Succeeded,
    /// The update failed: a worker aborted, a server died, or the workers timed out.
    Failed { reason: String },
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct Payload {
    attachments: Vec<Attachment>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct Attachment {
    fallback: String,
    color: &'static str,
    author_name: &'static str,
    title: &'static str,
    text: &'static str,
    fields: Vec<Field>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
struct Field {
    title: &'static str,
    value: String,
    short: bool,
}

/// The JSON body of a notification.
pub fn payload(event: &Event, request: &UpdateRequest) -> serde_json::Value {
    let servers = format!(
        "[{}]",
        request
            .servers
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let started = request
        .started_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut fields = vec![
        Field {
            title: "Version",
            value: request.version.clone(),
            short: true,
        },
        Field {
            title: "Servers",
            value: servers,
            short: true,
        },
        Field {
            title: "Started at",
            value: started,
            short: true,
        },
    ];
    let (color, title, text) = match event {
        Event::Begin { detail } => {
            fields.push(Field {
                title: "Detail",
                value: detail.clone(),
                short: false,
            });
            (
                "#439FE0",
                "Update begins",
                "neco-worker has started the updating process.",
            )
        }
        Event::Succeeded => (
            "good",
            "Update completed successfully",
            "boot servers were updated successfully.",
        ),
        Event::Failed { reason } => {
            fields.push(Field {
                title: "Reason",
                value: reason.clone(),
                short: false,
            });
            (
                "danger",
                "Update failed",
                "there were some errors. Please fix them and run `neco recover`.",
            )
        }
    };
    let payload = Payload {
        attachments: vec![Attachment {
            fallback: format!("{title}: {}", request.version),
            color,
            author_name: "Boot server updater",
            title,
            text,
            fields,
        }],
    };
    serde_json::to_value(payload).unwrap_or(serde_json::Value::Null)
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("cannot notify: {0}")]
    BadUrl(String),
}

/// Posts notifications to one webhook URL (a credential: shown by its host only).
pub struct Notifier {
    http: Http,
    url: reqwest::Url,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("host", &self.url.host_str())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier for `url` that retries a failed post a few times within a few seconds.
    pub fn new(url: &str, proxy: Option<&str>) -> Result<Self, NotifyError> {
        let url = reqwest::Url::parse(url).map_err(|e| NotifyError::BadUrl(e.to_string()))?;
        let retry = RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
        };
        // The webhook URL is a credential: logs and errors name its host only.
        let options = fetch::http::HttpOptions {
            secret_urls: true,
            ..crate::http_options(proxy, 1, retry).map_err(NotifyError::BadUrl)?
        };
        let http = Http::with_options(options)?;
        Ok(Self { http, url })
    }

    /// Sends one notification; a non-2xx answer is an error.
    pub async fn notify(&self, event: &Event, request: &UpdateRequest) -> Result<(), NotifyError> {
        let body = payload(event, request);
        let req = self
            .http
            .client()
            .post(self.url.clone())
            .timeout(Duration::from_secs(5))
            .json(&body)
            .build()
            .map_err(|e| NotifyError::BadUrl(e.without_url().to_string()))?;
        require_success("POST", self.http.fetch(req).await?)?;
        Ok(())
    }

    /// Sends and logs the outcome; never fails.
    pub async fn notify_logged(&self, event: &Event, request: &UpdateRequest) {
        match self.notify(event, request).await {
            Ok(()) => tracing::info!(?event, version = %request.version, "notification sent"),
            Err(e) => {
                tracing::warn!(?event, version = %request.version, error = %e, "notification failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The webhook URL's path is its secret: a failed post's error and the notifier's Debug
    /// name the host only.
    #[tokio::test]
    async fn the_webhook_path_never_appears_in_errors() {
        const SECRET: &str = "T000/B000/XXXXsecretXXXX";
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let notifier = Notifier::new(&format!("http://{addr}/services/{SECRET}"), None).unwrap();
        assert!(!format!("{notifier:?}").contains(SECRET), "{notifier:?}");
        let error = notifier
            .notify(&Event::Succeeded, &request())
            .await
            .unwrap_err()
            .to_string();
        assert!(!error.contains(SECRET), "{error}");
        assert!(error.contains(&addr.to_string()), "{error}");
    }

    fn request() -> UpdateRequest {
        serde_json::from_str(
            r#"{"version":"2026.11.26-1","servers":[0,1,10],"stop":false,"started_at":"2026-11-26T01:02:03Z"}"#,
        )
        .unwrap()
    }

    #[test]
    fn failure_payload_has_every_field() {
        let body = payload(
            &Event::Failed {
                reason: "boot server 1 is dead".into(),
            },
            &request(),
        );
        let a = &body["attachments"][0];
        assert_eq!(a["color"], "danger");
        assert_eq!(a["title"], "Update failed");
        let fields: Vec<(String, String)> = a["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["title"].as_str().unwrap().to_owned(),
                    f["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            fields,
            vec![
                ("Version".into(), "2026.11.26-1".into()),
                ("Servers".into(), "[0 1 10]".into()),
                ("Started at".into(), "2026-11-26T01:02:03Z".into()),
                ("Reason".into(), "boot server 1 is dead".into()),
            ]
        );
    }

    #[test]
    fn begin_and_success_colours() {
        let begin = payload(
            &Event::Begin {
                detail: "start updating the new release.".into(),
            },
            &request(),
        );
        assert_eq!(begin["attachments"][0]["color"], "#439FE0");
        let ok = payload(&Event::Succeeded, &request());
        assert_eq!(ok["attachments"][0]["color"], "good");
        assert_eq!(ok["attachments"][0]["fields"].as_array().unwrap().len(), 3);
    }
}
