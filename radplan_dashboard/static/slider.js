// The image slider: swaps the slice image when the range input moves (no inline script: the CSP forbids it).
document.addEventListener("DOMContentLoaded", function () {
  var slider = document.getElementById("slice-slider");
  var image = document.getElementById("slice-image");
  var label = document.getElementById("slice-label");
  if (!slider || !image) { return; }
  slider.addEventListener("input", function () {
    image.src = slider.dataset.base + slider.value + ".png";
    label.textContent = "slice " + (Number(slider.value) + 1) + " of " + (Number(slider.max) + 1);
  });
});
