//! Static files under the web root: safe path resolution, content types and
//! revalidation headers. Nothing outside the root is ever opened.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::request::{Request, percent_decode};
use super::response::{Response, Status};
use crate::datetime::http_date;

/// The web root, canonicalised once at start-up.
#[derive(Debug, Clone)]
pub struct WebRoot {
    root: PathBuf,
}

impl WebRoot {
    pub fn open(dir: &Path) -> Result<WebRoot, String> {
        let root = dir
            .canonicalize()
            .map_err(|err| format!("web root {}: {err}", dir.display()))?;
        if !root.is_dir() {
            return Err(format!("web root {} is not a directory", dir.display()));
        }
        Ok(WebRoot { root })
    }

    /// Answers GET or HEAD for a file.
    pub fn serve(&self, request: &Request) -> Response {
        let relative = match safe_relative_path(request.path()) {
            Ok(relative) => relative,
            Err(status) => return Response::text(status, "no such file"),
        };
        let response = self.file_response(&relative, request);
        if request.method == "HEAD" {
            response.without_body()
        } else {
            response
        }
    }

    fn file_response(&self, relative: &str, request: &Request) -> Response {
        let not_found = || Response::text(Status::NotFound, "no such file");
        // Symlinks could still point outside: check where the path really lands.
        let Ok(path) = self.root.join(relative).canonicalize() else {
            return not_found();
        };
        if !path.starts_with(&self.root) {
            return not_found();
        }
        let Ok(meta) = fs::metadata(&path) else {
            return not_found();
        };
        if !meta.is_file() {
            return not_found();
        }
        let modified = meta.modified().unwrap_or(UNIX_EPOCH);
        let stamp = modified
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let etag = format!("\"{:x}-{:x}\"", meta.len(), stamp);
        let revalidate = |response: Response| {
            response
                .header("ETag", etag.clone())
                .header("Last-Modified", http_date(modified))
                .header("Cache-Control", "no-cache")
                .header("X-Content-Type-Options", "nosniff")
        };
        if request
            .header("if-none-match")
            .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag))
        {
            return revalidate(Response::new(Status::NotModified));
        }
        match fs::read(&path) {
            Ok(body) => revalidate(Response::new(Status::Ok).body(content_type(&path), body)),
            Err(err) => {
                log::warn!("reading {}: {err}", path.display());
                Response::text(Status::InternalServerError, "cannot read file")
            }
        }
    }
}

/// Turns a URL path into a relative file path, or says why not.
///
/// Refused: anything not starting with `/`, bad percent-escapes, NUL or `\`,
/// and any segment that is empty-after-decoding `.`/`..` or starts with a dot.
pub fn safe_relative_path(url_path: &str) -> Result<String, Status> {
    if !url_path.starts_with('/') {
        return Err(Status::BadRequest);
    }
    let decoded = percent_decode(url_path).ok_or(Status::BadRequest)?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return Err(Status::BadRequest);
    }
    let segments: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    if segments.iter().any(|s| s.starts_with('.')) {
        return Err(Status::NotFound);
    }
    if segments.is_empty() {
        return Ok("index.html".to_string());
    }
    Ok(segments.join("/"))
}

fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_paths_inside_the_root() {
        assert_eq!(safe_relative_path("/").unwrap(), "index.html");
        assert_eq!(safe_relative_path("/css/site.css").unwrap(), "css/site.css");
        assert_eq!(safe_relative_path("//etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(safe_relative_path("/a%20b.txt").unwrap(), "a b.txt");
    }

    #[test]
    fn refuses_escapes_and_hidden_files() {
        assert_eq!(safe_relative_path("/../secret"), Err(Status::NotFound));
        assert_eq!(safe_relative_path("/%2e%2e/secret"), Err(Status::NotFound));
        assert_eq!(
            safe_relative_path("/a/%2E%2E/%2e%2e/b"),
            Err(Status::NotFound)
        );
        assert_eq!(safe_relative_path("/.git/config"), Err(Status::NotFound));
        assert_eq!(
            safe_relative_path("/a%2f..%2f..%2fb"),
            Err(Status::NotFound)
        );
        assert_eq!(safe_relative_path("/a%5c..%5cb"), Err(Status::BadRequest));
        assert_eq!(safe_relative_path("/a%00"), Err(Status::BadRequest));
        assert_eq!(safe_relative_path("/bad%zz"), Err(Status::BadRequest));
        assert_eq!(safe_relative_path("http://evil/x"), Err(Status::BadRequest));
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(
            content_type(Path::new("a.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("a.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a")), "application/octet-stream");
    }
}
