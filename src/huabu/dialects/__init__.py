"""One module per API dialect: frozen wire schemas, pure translation to and from the native
model, and a thin router. A dialect never imports the engine or another dialect."""
