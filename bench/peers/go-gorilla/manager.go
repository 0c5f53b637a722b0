package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

var (
	websocketUpgrader = websocket.Upgrader{
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
	}
)

var (
	ErrEventNotSupported = errors.New("this event type is not supported")
)

// Manager holds every client and routes their events.
type Manager struct {
	clients ClientList
	sync.RWMutex

	handlers map[string]EventHandler
	otps     *RetentionMap
	origins  map[string]bool
}

func NewManager(ctx context.Context, port int) *Manager {
	m := &Manager{
		clients:  make(ClientList),
		handlers: make(map[string]EventHandler),
		otps:     NewRetentionMap(ctx, 5*time.Second),
		origins:  make(map[string]bool),
	}
	// The tutorial allows only https://localhost:8080; the port allows the
	// same origins as chat-server: its own, over http or https.
	for _, scheme := range []string{"http", "https"} {
		for _, host := range []string{"localhost", "127.0.0.1"} {
			m.origins[fmt.Sprintf("%s://%s:%d", scheme, host, port)] = true
		}
	}
	m.setupEventHandlers()
	return m
}

func (m *Manager) checkOrigin(r *http.Request) bool {
	return m.origins[r.Header.Get("Origin")]
}

func (m *Manager) setupEventHandlers() {
	m.handlers[EventSendMessage] = SendMessageHandler
	m.handlers[EventChangeRoom] = ChatRoomHandler
}

func (m *Manager) routeEvent(event Event, c *Client) error {
	if handler, ok := m.handlers[event.Type]; ok {
		return handler(event, c)
	}
	return ErrEventNotSupported
}

func (m *Manager) loginHandler(w http.ResponseWriter, r *http.Request) {
	type userLoginRequest struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	var req userLoginRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// The tutorial's only account, compared in plain text.
	if req.Username == "percy" && req.Password == "123" {
		type response struct {
			OTP string `json:"otp"`
		}
		otp := m.otps.NewOTP()
		data, err := json.Marshal(response{OTP: otp.Key})
		if err != nil {
			log.Println(err)
			return
		}
		w.WriteHeader(http.StatusOK)
		w.Write(data)
		return
	}
	w.WriteHeader(http.StatusUnauthorized)
}

func (m *Manager) serveWS(w http.ResponseWriter, r *http.Request) {
	otp := r.URL.Query().Get("otp")
	if otp == "" || !m.otps.VerifyOTP(otp) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	upgrader := websocketUpgrader
	upgrader.CheckOrigin = m.checkOrigin
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		log.Println(err)
		return
	}
	client := NewClient(conn, m)
	m.addClient(client)
	go client.readMessages()
	go client.writeMessages()
}

func (m *Manager) addClient(client *Client) {
	m.Lock()
	defer m.Unlock()
	m.clients[client] = true
}

func (m *Manager) removeClient(client *Client) {
	m.Lock()
	defer m.Unlock()
	if _, ok := m.clients[client]; ok {
		client.connection.Close()
		delete(m.clients, client)
	}
}

func (m *Manager) setRoom(c *Client, room string) {
	m.Lock()
	defer m.Unlock()
	c.chatroom = room
}

// roomMembers is the tutorial's "range over every client, keep those in the
// sender's room", done under the read lock.
func (m *Manager) roomMembers(c *Client) []*Client {
	m.RLock()
	defer m.RUnlock()
	members := make([]*Client, 0, 16)
	for client := range m.clients {
		if client.chatroom == c.chatroom {
			members = append(members, client)
		}
	}
	return members
}
