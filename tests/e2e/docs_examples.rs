//! The guides' complete configurations stay valid: every ```yaml block in
//! `docs/*.md` whose first line is `# complete example` must pass
//! `portcullis check -c` on its own. Fragments (blocks without the marker)
//! are not checked.

use std::path::{Path, PathBuf};

use crate::common::run_cli;

/// The first line that marks a block as a complete configuration.
const MARKER: &str = "# complete example";

/// One marked block: the file it is in, the line of its opening fence
/// (1-based) and its text.
struct Example {
    file: PathBuf,
    line: usize,
    text: String,
}

/// The marked ```yaml blocks of one Markdown text.
fn marked_blocks(file: &Path, markdown: &str) -> Vec<Example> {
    let mut found = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let fence = line.trim_start();
        if !fence.starts_with("```") {
            continue;
        }
        let info = fence.trim_start_matches('`').trim();
        // The block's body, up to the closing fence.
        let mut body = Vec::new();
        for (_, l) in lines.by_ref() {
            if l.trim_start().starts_with("```") {
                break;
            }
            body.push(l);
        }
        if info == "yaml" && body.first().map(|l| l.trim()) == Some(MARKER) {
            found.push(Example {
                file: file.to_path_buf(),
                line: i + 1,
                text: body.join("\n") + "\n",
            });
        }
    }
    found
}

/// `check`'s output with its `FILE:LINE:COL:` positions in the temporary
/// file turned into positions in the Markdown file (the block's first line
/// is the line after its opening fence).
fn in_doc_lines(output: &str, config: &Path, doc: &str, fence: usize) -> String {
    let prefix = format!("{}:", config.display());
    output
        .lines()
        .map(
            |l| match l.strip_prefix(&prefix).and_then(|r| r.split_once(':')) {
                Some((line, rest)) => match line.parse::<usize>() {
                    Ok(n) => format!("{doc}:{}:{rest}", fence + n),
                    Err(_) => l.to_string(),
                },
                None => l.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_fence_scanner_finds_only_marked_yaml_blocks() {
    let md = "intro\n\n```yaml\n# complete example\na: 1\n```\n\n```yaml\nb: 2\n```\n\
              ```sh\n# complete example\n```\n```yaml\n# complete example\nc: 3\n```\n";
    let found = marked_blocks(Path::new("x.md"), md);
    let got: Vec<(usize, &str)> = found.iter().map(|e| (e.line, e.text.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (3, "# complete example\na: 1\n"),
            (14, "# complete example\nc: 3\n")
        ]
    );
}

#[test]
fn every_complete_example_in_the_docs_passes_check() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&docs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    let examples: Vec<Example> = files
        .iter()
        .flat_map(|f| marked_blocks(f, &std::fs::read_to_string(f).unwrap()))
        .collect();
    assert!(
        !examples.is_empty(),
        "no ```yaml block in docs/*.md starts with `{MARKER}`: is the marker misspelled?"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (n, ex) in examples.iter().enumerate() {
        let config = dir.path().join(format!("example-{n}.yaml"));
        std::fs::write(&config, &ex.text).unwrap();
        let (ok, stdout, stderr) = run_cli("check", &["-c", config.to_str().unwrap()], "");
        if !ok {
            let name = ex.file.file_name().unwrap().to_string_lossy();
            let doc = format!("docs/{name}");
            let output = in_doc_lines(&format!("{stdout}{stderr}"), &config, &doc, ex.line);
            failures.push(format!(
                "{doc}:{}: this complete example fails `portcullis check`:\n{output}",
                ex.line
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
