// A port of the gorilla/websocket chat tutorial's server ("Mastering WebSockets
// With Go": rooms, JSON events, OTP login), kept as close to the tutorial as
// its protocol allows, so bench/ can drive it with the same load tool as
// chat-server. See README.md for every place it differs from the tutorial.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to listen on")
	www := flag.String("www", "./frontend", "web root served at /")
	flag.DurationVar(&pingInterval, "ping-interval", pingInterval, "time between server pings")
	flag.DurationVar(&pongWait, "pong-wait", pongWait, "silence before a client is dropped")
	flag.Parse()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	manager := NewManager(ctx, port)

	http.Handle("/", http.FileServer(http.Dir(*www)))
	http.HandleFunc("/login", manager.loginHandler)
	http.HandleFunc("/ws", manager.serveWS)

	log.Printf("listening on http://%s", ln.Addr())
	log.Fatal(http.Serve(ln, nil))
}
