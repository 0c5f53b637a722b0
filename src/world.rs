//! What every connection's step may touch: the configuration, the HTTP
//! site, the chat hub, the back end, the metrics and the reused lists. Built
//! once from a `Config`; the server's loop, the core's unit tests and the
//! `connection` fuzz target all drive connections through it, so a new field
//! is one edit, not three.
//!
//! A step is three calls: `context` for the core, the step itself (the
//! caller owns the connection), then `dispatch`, which hands the chat events
//! the step produced to the hub, in order.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tungstenite::Message;

use crate::auth::{Accounts, Bans, LoginLimiter, LoginTurns, Otps};
use crate::broker::{Backend, Control, MemberId, StoreQuery};
use crate::config::Config;
use crate::conn::{Context, Event};
use crate::http::files::WebRoot;
use crate::http::api::{Action, ApiKey};
use crate::http::{Origins, Site, unix_seconds};
use crate::hub::{Hub, Mailboxes, PresenceLimits};
use crate::logging::{Escaped, LogThrottle};
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::slab::SlotId;

pub struct World {
    pub config: Config,
    pub site: Site,
    pub hub: Hub,
    /// Orders rooms' messages and keeps what processes share.
    pub backend: Box<dyn Backend>,
    pub metrics: Metrics,
    /// Reused lists: a core's events for the hub, and messages decoded in one read.
    events: Vec<Event>,
    inbox: Vec<Message>,
    /// Questions for the back end's store, each with the connection asking.
    pub queries: Vec<(SlotId, StoreQuery)>,
    /// Operators' calls other processes announced, being heeded.
    controls: Vec<Control>,
    /// The wall clock this turn, for what is stamped with a date.
    wall: SystemTime,
}

impl World {
    /// The world `config` describes, around `backend`; `own_origins` are
    /// the listeners' (allowed unless `--allowed-origin` says otherwise).
    /// `metrics_elsewhere`: `/metrics` has a listener of its own, and the
    /// public ones refuse it.
    pub fn open(
        config: Config,
        own_origins: Vec<String>,
        metrics_elsewhere: bool,
        backend: Box<dyn Backend>,
    ) -> Result<World, String> {
        let accounts = match &config.users {
            Some(path) => Accounts::load(path)?,
            None => {
                log::warn!("no --users file: the demo account percy / 123 is enabled");
                Accounts::demo()?
            }
        };
        let mut world = World::with_accounts(config, own_origins, accounts, backend)?;
        world.site.metrics_elsewhere = metrics_elsewhere;
        Ok(world)
    }

    /// The same with these accounts instead of `config`'s (a test's own,
    /// hashed cheaply).
    pub fn with_accounts(
        config: Config,
        own_origins: Vec<String>,
        accounts: Accounts,
        backend: Box<dyn Backend>,
    ) -> Result<World, String> {
        let site = open_site(&config, own_origins, accounts)?;
        let presence = PresenceLimits {
            max_users: config.presence_max_users,
            count_interval: config.presence_count_interval,
        };
        Ok(World {
            config,
            site,
            hub: Hub::new(presence),
            backend,
            metrics: Metrics::default(),
            events: Vec::new(),
            inbox: Vec::new(),
            queries: Vec::new(),
            controls: Vec::new(),
            wall: SystemTime::UNIX_EPOCH,
        })
    }

    /// A loop turn starts at `now`, `wall` on the calendar: the one place
    /// below the loop where time comes in.
    pub fn begin_turn(&mut self, now: Instant, wall: SystemTime) {
        self.wall = wall;
        self.hub.begin_turn(now, wall);
        self.backend.begin_turn(now);
    }

    /// The context for one step of connection `id` at `now`.
    pub fn context(&mut self, id: SlotId, now: Instant, login_turn: bool) -> Context<'_> {
        Context {
            now,
            config: &self.config,
            site: &mut self.site,
            metrics: &mut self.metrics,
            events: &mut self.events,
            inbox: &mut self.inbox,
            queries: &mut self.queries,
            id,
            login_turn,
            handshaking: false,
            store: self.backend.otp_store(),
            wall: self.wall,
        }
    }

    /// The chat events the last step produced, not yet dispatched.
    #[cfg(feature = "testing")]
    pub fn pending_events(&self) -> &[Event] {
        &self.events
    }

    /// Lets the hub act on the chat events member's last step produced.
    pub fn dispatch(&mut self, member: MemberId, mail: &mut dyn Mailboxes) {
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            let backend = self.backend.as_mut();
            match event {
                Event::Joined { user, entry } => {
                    self.hub
                        .join(member, &user, entry, mail, backend, &mut self.metrics)
                }
                Event::Text(text) => {
                    self.hub
                        .handle(member, &text, mail, backend, &mut self.metrics)
                }
                Event::Api(action) => self.act(action, mail),
            }
        }
        self.events = events;
    }

    /// Does what a server API call asked, here, and tells the other
    /// processes what concerns them.
    fn act(&mut self, action: Action, mail: &mut dyn Mailboxes) {
        let backend = self.backend.as_mut();
        let control = match action {
            Action::Post {
                room,
                message,
                from,
            } => {
                let post = (room.as_str(), message, from.as_str());
                (self.hub).post_as(post, mail, backend, &mut self.metrics);
                return;
            }
            Action::Disconnect { user } => Control::Disconnect { user },
            Action::Ban { user, until } => {
                let now = unix_seconds(self.wall);
                self.site.bans.ban(&user, until, now);
                Control::Ban { user, until }
            }
            Action::Unban { user } => {
                self.site.bans.unban(&user);
                Control::Unban { user }
            }
        };
        self.heed(&control, mail);
        self.backend.announce(control);
    }

    /// What other processes' API calls asked, done here.
    pub fn heed_controls(&mut self, mail: &mut dyn Mailboxes) {
        self.backend.take_controls(&mut self.controls);
        for control in std::mem::take(&mut self.controls) {
            match &control {
                Control::Ban { user, until } => self.site.bans.heard(user, Some(*until)),
                Control::Unban { user } => self.site.bans.heard(user, None),
                Control::Disconnect { .. } => {}
            }
            self.heed(&control, mail);
        }
    }

    /// A disconnect or ban closes the user's WebSockets here and ends its
    /// sessions.
    fn heed(&mut self, control: &Control, mail: &mut dyn Mailboxes) {
        let (Control::Disconnect { user } | Control::Ban { user, .. }) = control else {
            return;
        };
        let members = self.hub.members_of(user);
        for &member in &members {
            mail.close(member, "disconnected by the server");
        }
        self.site.sessions.end_user(user, self.wall);
        log::info!(
            "{} disconnected by the server ({} connection(s) here)",
            Escaped(user),
            members.len()
        );
    }

    /// Delivers what the back end brought (room messages, replays).
    pub fn deliver_arrivals(&mut self, mail: &mut dyn Mailboxes) {
        self.hub
            .deliver_arrivals(mail, self.backend.as_mut(), &mut self.metrics);
    }

    /// The turn's end for presence, around the back end's turn: this
    /// process's changes go to the back end before it flushes
    /// (`publish_presence`), and watchers are told what came of them and
    /// of other processes' after it (`flush_presence`).
    pub fn publish_presence(&mut self) {
        self.hub.publish_presence(self.backend.as_mut());
    }

    pub fn flush_presence(&mut self, now: Instant, mail: &mut dyn Mailboxes) {
        self.hub.flush_presence(now, mail, &mut self.metrics);
    }

    /// Passes the cores' questions to the back end's store.
    pub fn ask_store(&mut self) {
        for (asker, query) in self.queries.drain(..) {
            self.backend.ask(asker, query);
        }
    }
}

/// The HTTP site: web root, accounts, OTPs, sessions and the origins allowed.
fn open_site(
    config: &Config,
    own_origins: Vec<String>,
    accounts: Accounts,
) -> Result<Site, String> {
    let origins = match config.allowed_origins.is_empty() {
        true => own_origins,
        false => config.allowed_origins.clone(),
    };
    if let Some(path) = &config.echo_path {
        log::warn!("echo route {path} is on: unauthenticated, for conformance tests only");
    }
    let api_key = config.api_key.as_deref().map(ApiKey::read).transpose()?;
    // Without Redis, bans are kept beside the key (with it, in Redis).
    let shared = config.redis.is_some() || !config.redis_sentinels.is_empty();
    let bans_file = match (&config.api_key, shared) {
        (Some(key), false) => Some(PathBuf::from(format!("{}.bans", key.display()))),
        _ => None,
    };
    let bans = Bans::open(bans_file, unix_seconds(SystemTime::now()));
    let site = Site {
        root: WebRoot::open(&config.www)?,
        origins: Origins::new(origins),
        accounts,
        otps: Otps::default(),
        otp_ttl: config.otp_ttl,
        echo_path: config.echo_path.clone(),
        limiter: LoginLimiter::default(),
        turns: LoginTurns::default(),
        sessions: open_sessions(config)?,
        metrics_elsewhere: false,
        refusal_log: LogThrottle::new(Duration::from_secs(5)),
        flood_log: LogThrottle::new(Duration::from_secs(5)),
        api_key,
        api_max_message: config.max_message,
        bans,
    };
    let mut site = site;
    site.sessions.bind(site.accounts.credentials());
    log::info!("allowed origins: {}", site.origins.list().join(", "));
    Ok(site)
}

/// Sessions signed with the key file, or with a key of this process's own.
fn open_sessions(config: &Config) -> Result<Sessions, String> {
    if config.session_key.is_none() {
        log::warn!(
            "no --session-key file: sessions are signed with a random key and end when this process does"
        );
    }
    Sessions::open(config.session_key.as_deref(), config.session_ttl)
}
