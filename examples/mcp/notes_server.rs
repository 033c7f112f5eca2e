//! A small MCP server for the tests and as an example: notes kept in the file
//! `NOTES_FILE`. `list_notes` is annotated read-only (an agent action Plexus runs at
//! once); `add_note` is not (Plexus asks a person first). It speaks over stdio, or over
//! streamable HTTP at `/mcp` with `--http ADDR` (it then prints `listening on ADDR`).
//!
//! ```sh
//! cargo build -p plexus-cli --example notes_server
//! plexus agent add-mcp notes --env NOTES_FILE=/tmp/notes.txt -- target/debug/examples/notes_server
//! plexus action invoke notes list_notes
//! NOTES_FILE=/tmp/notes.txt target/debug/examples/notes_server --http 127.0.0.1:8001 &
//! plexus agent add-mcp remote-notes --url http://127.0.0.1:8001/mcp
//! ```

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use std::path::PathBuf;

#[derive(Clone)]
struct Notes {
    file: PathBuf,
    // Read by the code `tool_handler` generates.
    #[allow(dead_code)]
    tool_router: ToolRouter<Self>,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct NewNote {
    /// What to note down
    text: String,
}

#[tool_router]
impl Notes {
    fn new(file: PathBuf) -> Self {
        Notes {
            file,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Every note, oldest first",
        annotations(read_only_hint = true)
    )]
    async fn list_notes(&self) -> String {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let notes: Vec<&str> = text.lines().collect();
        serde_json::json!({ "notes": notes, "count": notes.len() }).to_string()
    }

    #[tool(description = "Adds a note")]
    async fn add_note(&self, Parameters(note): Parameters<NewNote>) -> Result<String, String> {
        if note.text.contains('\n') {
            return Err("a note is one line".into());
        }
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .map_err(|e| e.to_string())?;
        writeln!(f, "{}", note.text).map_err(|e| e.to_string())?;
        Ok(serde_json::json!({ "added": note.text }).to_string())
    }
}

#[tool_handler]
impl ServerHandler for Notes {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file =
        PathBuf::from(std::env::var_os("NOTES_FILE").ok_or("set NOTES_FILE to the notes' file")?);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, addr] = args.as_slice()
        && flag == "--http"
    {
        use rmcp::transport::streamable_http_server::{
            StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
        };
        let service = StreamableHttpService::new(
            move || Ok(Notes::new(file.clone())),
            LocalSessionManager::default().into(),
            StreamableHttpServerConfig::default(),
        );
        let app = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("listening on {}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        return Ok(());
    }
    let service = Notes::new(file).serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}
