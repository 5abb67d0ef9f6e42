set terminal pngcairo size 960,600 font 'sans,11'
set datafile separator ','
set datafile missing 'NaN'
set key autotitle columnhead
set grid
set output 'wan_bytes_per_step.png'
set title 'Bytes between the clouds per step (pool 0 leader, 421,642-parameter CNN)'
set ylabel 'bytes per step (log scale)'
set logscale y
set format y '10^{%L}'
set yrange [1000:1e7]
set style fill solid 0.6 border -1
set boxwidth 0.6
set xtics rotate by -30
unset key
set grid ytics
plot 'wan_bytes_per_step.csv' using 0:2:xtic(1) with boxes, \
     '' using 0:2:(sprintf('%d B\n%.0fx fewer', $2, $3)) with labels offset 0,1.5 font 'sans,9'
