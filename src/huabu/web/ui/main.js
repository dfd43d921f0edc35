// Last of the page's scripts: every part has registered itself; start.
"use strict";

translate();
start();
