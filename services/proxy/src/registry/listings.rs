//! Listings: `GET /v2/<name>/tags/list` and `GET /v2/_catalog`, paginated with `n` and `last`
//! and an RFC 5988 `Link` to the next page. Both come from build-index's tag list.

use std::collections::BTreeSet;
use std::ops::Bound;

use axum::response::Response;
use http::Uri;
use kraken_oci::route::query_params;
use kraken_oci::{RegistryError, Route, response};

use super::{MAX_PAGE_SIZE, Registry, Result, repository, tag_error};

/// Tags walked at most for one catalog answer (the catalog is derived from the tag list).
const MAX_CATALOG_TAGS: usize = 1_000_000;

impl Registry {
    pub(super) async fn tags_list(&self, name: &str, uri: &Uri) -> Result<Response> {
        let repository = repository(name)?;
        let query = query_params(uri);
        let n = query.get("n").and_then(|n| n.parse::<usize>().ok());
        let last = query.get("last").filter(|last| !last.is_empty()).cloned();
        let mut tags = Vec::new();
        let mut next = None;
        match n {
            Some(0) => {}
            Some(n) => {
                let page = self
                    .tags
                    .list_repository(repository.as_str(), page_size(n), last.as_deref())
                    .await
                    .map_err(tag_error)?;
                tags = page.tags;
                next = page.next_page_token.map(|token| (n, token));
            }
            None => {
                let mut token = last.clone();
                loop {
                    let page = self
                        .tags
                        .list_repository(
                            repository.as_str(),
                            MAX_PAGE_SIZE as u32,
                            token.as_deref(),
                        )
                        .await
                        .map_err(tag_error)?;
                    tags.extend(page.tags);
                    match page.next_page_token {
                        Some(next) => token = Some(next),
                        None => break,
                    }
                }
            }
        }
        if tags.is_empty() && last.is_none() && n != Some(0) {
            return Err(RegistryError::name_unknown(&repository));
        }
        let next = next.map(|(n, token)| {
            let listing = Route::TagsList {
                name: repository.as_str(),
            };
            response::next_link(&listing, n, &token)
        });
        Ok(response::tag_list(repository.as_str(), &tags, next))
    }

    pub(super) async fn catalog(&self, uri: &Uri) -> Result<Response> {
        let query = query_params(uri);
        let n = query.get("n").and_then(|n| n.parse::<usize>().ok());
        let last = query.get("last").filter(|last| !last.is_empty()).cloned();
        // Repositories are the distinct prefixes of the tag names (no repository index exists
        // apart from them), so the whole tag list is walked: the catalog is an admin call.
        let mut repositories = BTreeSet::new();
        let mut token: Option<String> = None;
        let mut walked = 0usize;
        loop {
            let page = self
                .tags
                .list("", MAX_PAGE_SIZE as u32, token.as_deref())
                .await
                .map_err(tag_error)?;
            walked += page.tags.len();
            for tag in &page.tags {
                if let Some((repository, _)) = tag.rsplit_once(':') {
                    repositories.insert(repository.to_owned());
                }
            }
            match page.next_page_token {
                Some(next) if walked < MAX_CATALOG_TAGS => token = Some(next),
                _ => break,
            }
        }
        let start = match &last {
            Some(last) => Bound::Excluded(last.clone()),
            None => Bound::Unbounded,
        };
        let mut listed: Vec<String> = repositories
            .range((start, Bound::Unbounded))
            .take(n.map_or(usize::MAX, |n| n.saturating_add(1)))
            .cloned()
            .collect();
        let more = n.is_some_and(|n| listed.len() > n);
        if let Some(n) = n {
            listed.truncate(n);
        }
        let next = match (more, n, listed.last()) {
            (true, Some(n), Some(last)) => Some(response::next_link(&Route::Catalog, n, last)),
            _ => None,
        };
        Ok(response::catalog(&listed, next))
    }
}

fn page_size(n: usize) -> u32 {
    n.min(MAX_PAGE_SIZE) as u32
}
