// The interactive API docs: Swagger UI from files this server serves itself (no CDN, works offline).
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,  // Swagger UI would otherwise ask validator.swagger.io about the schema
    layout: "BaseLayout",
    presets: [SwaggerUIBundle.presets.apis],
  });
});
