//! chat-tokio: the chat server a Rust user would write first, as a peer for
//! chat-bench. axum with tokio, one `tokio::sync::broadcast` channel per room,
//! two tasks per connection (one forwards the room's broadcasts to the socket,
//! one reads the socket), as in axum's own chat example. Same URLs, events and
//! defaults as chat-server and the Go peer; see README.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tower_http::services::ServeDir;

/// The tutorial's numbers.
const OTP_TTL: Duration = Duration::from_secs(5);
const MAX_MESSAGE: usize = 512;
const MAX_ROOM_NAME: usize = 64;
/// Messages a room's channel holds for a slow receiver (axum's example: 100).
const ROOM_CAPACITY: usize = 100;

#[derive(Parser)]
#[command(about = "Chat server: axum + tokio, a broadcast channel per room")]
struct Args {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Web root served at /
    #[arg(long, default_value = "www")]
    www: PathBuf,
    /// Time between server pings
    #[arg(long, default_value = "9s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    /// Silence (no pong) before a client is dropped
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pong_wait: Duration,
}

struct AppState {
    /// Room name -> its channel; every member holds a receiver.
    rooms: Mutex<HashMap<String, broadcast::Sender<String>>>,
    /// OTP -> (user, issued at).
    otps: Mutex<HashMap<String, (String, Instant)>>,
    origins: Vec<String>,
    ping_interval: Duration,
    pong_wait: Duration,
}

impl AppState {
    fn room(&self, name: &str) -> broadcast::Sender<String> {
        let mut rooms = self.rooms.lock().unwrap();
        rooms
            .entry(name.to_owned())
            .or_insert_with(|| broadcast::channel(ROOM_CAPACITY).0)
            .clone()
    }

    /// Consumes an OTP: its user once, then None.
    fn take_otp(&self, otp: &str) -> Option<String> {
        let (user, issued) = self.otps.lock().unwrap().remove(otp)?;
        (issued.elapsed() < OTP_TTL).then_some(user)
    }
}

/// Events from a client: `{"type": "...", "payload": {...}}`.
#[derive(Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
enum ClientEvent {
    /// `from` may be sent too; the logged-in user is used instead.
    SendMessage {
        message: String,
    },
    ChangeRoom {
        name: String,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
enum ServerEvent<'a> {
    NewMessage {
        message: &'a str,
        from: &'a str,
        sent: DateTime<Utc>,
    },
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origins = ["http", "https"]
        .iter()
        .flat_map(|scheme| {
            ["localhost", "127.0.0.1"]
                .iter()
                .map(move |host| format!("{scheme}://{host}:{}", addr.port()))
        })
        .collect();
    let state = Arc::new(AppState {
        rooms: Mutex::new(HashMap::new()),
        otps: Mutex::new(HashMap::new()),
        origins,
        ping_interval: args.ping_interval,
        pong_wait: args.pong_wait,
    });
    tokio::spawn(sweep_otps(state.clone()));

    let app = Router::new()
        .route("/login", post(login))
        .route("/ws", get(websocket_handler))
        .fallback_service(ServeDir::new(&args.www))
        .with_state(state);
    // TCP_NODELAY as axum's documentation shows it (`tap_io`): chat frames
    // are small, and Go and chat-server both set it.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    eprintln!("listening on http://{addr}");
    axum::serve(listener, app).await.unwrap();
}

/// Drops expired OTPs now and then (the tutorial sweeps every 400 ms).
async fn sweep_otps(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(400));
    loop {
        tick.tick().await;
        state
            .otps
            .lock()
            .unwrap()
            .retain(|_, (_, issued)| issued.elapsed() < OTP_TTL);
    }
}

#[derive(Deserialize)]
struct LoginRequest {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct LoginResponse {
    otp: String,
}

/// `POST /login`: the demo account percy / 123, compared in plain text as in
/// the Go tutorial.
async fn login(
    State(state): State<Arc<AppState>>,
    Json(request): Json<LoginRequest>,
) -> Result<Json<LoginResponse>, StatusCode> {
    if request.username != "percy" || request.password != "123" {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let otp = uuid::Uuid::new_v4().to_string();
    state
        .otps
        .lock()
        .unwrap()
        .insert(otp.clone(), (request.username, Instant::now()));
    Ok(Json(LoginResponse { otp }))
}

#[derive(Deserialize)]
struct WsQuery {
    otp: Option<String>,
}

/// `GET /ws?otp=...`: 401 without a valid OTP, 403 for a foreign Origin.
async fn websocket_handler(
    ws: WebSocketUpgrade,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    State(state): State<Arc<AppState>>,
) -> Response {
    let Some(user) = query.otp.as_deref().and_then(|otp| state.take_otp(otp)) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !origin.is_some_and(|o| state.origins.iter().any(|allowed| allowed == o)) {
        return StatusCode::FORBIDDEN.into_response();
    }
    ws.max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| websocket(socket, state, user))
}

/// One connection: a task that sends (room broadcasts and pings) and a task
/// that receives (events and pongs); when either ends, the other is aborted.
async fn websocket(stream: WebSocket, state: Arc<AppState>, user: String) {
    let (mut sender, mut receiver) = stream.split();

    // New connections start in `general`.
    let mut tx = state.room("general");
    let mut rx = tx.subscribe();
    // A change of room hands the sending task the new room's receiver.
    let (switch_tx, mut switch_rx) = mpsc::channel::<broadcast::Receiver<String>>(1);

    let ping_interval = state.ping_interval;
    let mut send_task = tokio::spawn(async move {
        let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        loop {
            tokio::select! {
                // A receiver that lags more than the channel holds ends the
                // connection, as in axum's example (`while let Ok(..)`).
                message = rx.recv() => match message {
                    Ok(text) => {
                        if sender.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                },
                Some(new_rx) = switch_rx.recv() => rx = new_rx,
                _ = ping.tick() => {
                    if sender.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
            }
        }
    });

    let pong_wait = state.pong_wait;
    let mut recv_task = tokio::spawn(async move {
        // Read deadline: pong wait, extended by each pong (as gorilla's tutorial).
        let mut deadline = Instant::now() + pong_wait;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, receiver.next()).await {
            match message {
                Message::Text(text) => {
                    // Events it does not understand are ignored.
                    let Ok(event) = serde_json::from_str::<ClientEvent>(&text) else {
                        continue;
                    };
                    match event {
                        ClientEvent::SendMessage { message } => {
                            let event = ServerEvent::NewMessage {
                                message: &message,
                                from: &user,
                                sent: Utc::now(),
                            };
                            let _ = tx.send(serde_json::to_string(&event).unwrap());
                        }
                        ClientEvent::ChangeRoom { name } => {
                            if name.trim().is_empty() || name.len() > MAX_ROOM_NAME {
                                continue;
                            }
                            tx = state.room(&name);
                            if switch_tx.send(tx.subscribe()).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                Message::Pong(_) => deadline = Instant::now() + pong_wait,
                Message::Close(_) => break,
                // Pings are answered by the library; binary frames are ignored.
                _ => {}
            }
        }
    });

    // If any one of the tasks runs to completion, abort the other.
    tokio::select! {
        _ = &mut send_task => recv_task.abort(),
        _ = &mut recv_task => send_task.abort(),
    }
}
